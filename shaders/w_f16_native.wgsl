@group(0) @binding(1) var<storage, read> w: array<f16>;
fn load_w(row: u32, c: u32) -> f32 {
    return f32(w[2u * p.q_off + row * p.cols + c]);
}
fn load4(row: u32, c: u32) -> vec4<f32> {
    let e = 2u * p.q_off + row * p.cols + c;
    return vec4<f32>(f32(w[e]), f32(w[e + 1u]), f32(w[e + 2u]), f32(w[e + 3u]));
}
// 32-column block `b` of `row` as 8 vec4 (columns 4j..4j+3 in element j); cols % 32 == 0
fn wblock(row: u32, b: u32) -> array<vec4<f32>, 8> {
    var out: array<vec4<f32>, 8>;
    for (var j = 0u; j < 8u; j++) {
        out[j] = load4(row, b * 32u + j * 4u);
    }
    return out;
}
