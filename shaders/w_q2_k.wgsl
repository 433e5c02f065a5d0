// Q2_K super-blocks as in the file (84 bytes): 16 bytes of 4-bit scale and 4-bit minimum per 16
// values, 64 bytes of 2-bit values, f16 d, f16 dmin; value = (d·sc)·q − dmin·m.
const KW: u32 = 21u;
fn k_scales(base: u32, j: u32) -> vec4<f32> {
    let dd = unpack2x16float(w[base + 20u]);
    let s0 = k_byte(base, 2u * j);
    let s1 = k_byte(base, 2u * j + 1u);
    return vec4<f32>(dd.x * f32(s0 & 15u), -(dd.y * f32(s0 >> 4u)), dd.x * f32(s1 & 15u), -(dd.y * f32(s1 >> 4u)));
}
// sub-block j = 4n + k: bits 2k.. of qs[32n + l]
fn k_quants(base: u32, j: u32, i: u32) -> vec4<f32> {
    return vec4<f32>(k_bits(w[base + 4u + 8u * (j / 4u) + i], 2u * (j % 4u), 3u));
}
