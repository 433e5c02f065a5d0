@group(0) @binding(1) var<storage, read> w: array<f16>;
fn load_w(row: u32, c: u32) -> f32 {
    return f32(w[2u * p.q_off + row * p.cols + c]);
}
fn load4(row: u32, c: u32) -> vec4<f32> {
    let e = 2u * p.q_off + row * p.cols + c;
    return vec4<f32>(f32(w[e]), f32(w[e + 1u]), f32(w[e + 2u]), f32(w[e + 3u]));
}
