// Q8_K super-blocks without their unused sums (260 bytes): f32 d, 256 × i8; value = d·q.
const KW: u32 = 65u;
fn k_scales(base: u32, j: u32) -> vec4<f32> {
    let d = bitcast<f32>(w[base]);
    return vec4<f32>(d, 0.0, d, 0.0);
}
fn k_quants(base: u32, j: u32, i: u32) -> vec4<f32> {
    let q = vec4<i32>(bitcast<i32>(w[base + 1u + 8u * j + i]));
    return vec4<f32>((q << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}
