@group(0) @binding(1) var<storage, read> w: array<u32>;
fn load_w(row: u32, c: u32) -> f32 {
    return bitcast<f32>(w[p.q_off + row * p.cols + c]);
}
