alias XV = vec4<f32>;
const VW: u32 = 4u;
fn dotv(a: vec4<f32>, b: vec4<f32>) -> f32 {
    return dot(a, b);
}
fn load_v(row: u32, c: u32) -> vec4<f32> {
    return load4(row, c);
}
