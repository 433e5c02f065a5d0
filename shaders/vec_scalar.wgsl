alias XV = f32;
const VW: u32 = 1u;
fn dotv(a: f32, b: f32) -> f32 {
    return a * b;
}
fn load_v(row: u32, c: u32) -> f32 {
    return load_w(row, c);
}
