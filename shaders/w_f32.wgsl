@group(0) @binding(1) var<storage, read> w: array<u32>;
fn load_w(row: u32, c: u32) -> f32 {
    return bitcast<f32>(w[p.q_off + row * p.cols + c]);
}
fn load4(row: u32, c: u32) -> vec4<f32> {
    let e = p.q_off + row * p.cols + c;
    return bitcast<vec4<f32>>(vec4<u32>(w[e], w[e + 1u], w[e + 2u], w[e + 3u]));
}
