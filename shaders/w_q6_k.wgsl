// Q6_K super-blocks as in the file, padded to 212 bytes: 128 bytes of low nibbles `ql`, 64 bytes
// of high 2-bit pairs `qh`, 16 × i8 scales (one per 16 values), f16 d; value = (d·sc)·(q − 32).
const KW: u32 = 53u;
fn k_scales(base: u32, j: u32) -> vec4<f32> {
    let d = unpack2x16float(w[base + 52u]).x;
    // scales 2j and 2j + 1: bytes 192 + 2j and 193 + 2j
    let sw = bitcast<i32>(w[base + 48u + j / 2u]);
    let at = 16u * (j % 2u);
    return vec4<f32>(d * f32(extractBits(sw, at, 8u)), 0.0, d * f32(extractBits(sw, at + 8u, 8u)), 0.0);
}
// sub-block j = 4n + k: low bits from ql[64n + 32(k % 2) + l] (high nibble for k >= 2), high
// bits 2k.. of qh[32n + l]
fn k_quants(base: u32, j: u32, i: u32) -> vec4<f32> {
    let n = j / 4u;
    let k = j % 4u;
    let lo = k_bits(w[base + 16u * n + 8u * (k % 2u) + i], 4u * (k / 2u), 15u);
    let hi = k_bits(w[base + 32u + 8u * n + i], 2u * k, 3u);
    return vec4<f32>(vec4<i32>(lo | (hi << vec4<u32>(4u))) - vec4<i32>(32));
}
