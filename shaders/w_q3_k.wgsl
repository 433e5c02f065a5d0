// Q3_K super-blocks as in the file, padded to 112 bytes: 32 bytes `hmask` (3rd bit, inverted),
// 64 bytes of 2-bit values, 12 bytes of 6-bit scales, f16 d; value = (d·(sc − 32))·(q − 4·!h).
const KW: u32 = 28u;
// scale s (0..16): low 4 bits in byte s % 8 of the scales (high nibble for s >= 8), top 2 bits at
// bit 2·(s/4) of byte 8 + s % 4
fn k_scale3(base: u32, s: u32) -> i32 {
    let low = (k_byte(base, 96u + s % 8u) >> (4u * (s / 8u))) & 15u;
    let high = (k_byte(base, 104u + s % 4u) >> (2u * (s / 4u))) & 3u;
    return i32(low | (high << 4u)) - 32;
}
fn k_scales(base: u32, j: u32) -> vec4<f32> {
    let d = unpack2x16float(w[base + 27u]).x;
    return vec4<f32>(d * f32(k_scale3(base, 2u * j)), 0.0, d * f32(k_scale3(base, 2u * j + 1u)), 0.0);
}
// sub-block j = 4n + k: bits 2k.. of qs[32n + l], 3rd bit j of hmask[l]
fn k_quants(base: u32, j: u32, i: u32) -> vec4<f32> {
    let low = k_bits(w[base + 8u + 8u * (j / 4u) + i], 2u * (j % 4u), 3u);
    let h = k_bits(w[base + i], j, 1u);
    return vec4<f32>(vec4<i32>(low | (h << vec4<u32>(2u))) - vec4<i32>(4));
}
