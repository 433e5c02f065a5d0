@group(0) @binding(1) var<storage, read> w: array<f16>;
fn load_w(row: u32, c: u32) -> f32 {
    return f32(w[2u * p.q_off + row * p.cols + c]);
}
