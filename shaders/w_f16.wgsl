@group(0) @binding(1) var<storage, read> w: array<u32>;
fn load_w(row: u32, c: u32) -> f32 {
    let e = row * p.cols + c;
    let h = unpack2x16float(w[p.q_off + (e >> 1u)]);
    return select(h.x, h.y, (e & 1u) == 1u);
}
// c and cols are multiples of 4: two whole words
fn load4(row: u32, c: u32) -> vec4<f32> {
    let e = p.q_off + ((row * p.cols + c) >> 1u);
    return vec4<f32>(unpack2x16float(w[e]), unpack2x16float(w[e + 1u]));
}
