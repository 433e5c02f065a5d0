// Q4_K and Q5_K: f16 d and dmin, 12 bytes of 6-bit scales and minimums, (Q5_K) 32 bytes of 5th
// bits, 128 bytes of nibbles from word K_QS (the type's snippet before this one gives it);
// value = (d·sc)·q − dmin·m.
// scale and minimum of sub-block j: 6 bits each; sub-blocks 4..8 keep their low 4 bits in bytes
// 8..12 of the scales and their top 2 bits in the top bits of bytes 0..8
fn k_scale_min(base: u32, j: u32) -> vec2<u32> {
    if (j < 4u) {
        return vec2<u32>(k_byte(base, 4u + j) & 63u, k_byte(base, 8u + j) & 63u);
    }
    let b = k_byte(base, 8u + j);
    return vec2<u32>(
        (b & 15u) | ((k_byte(base, j) >> 6u) << 4u),
        (b >> 4u) | ((k_byte(base, 4u + j) >> 6u) << 4u),
    );
}
fn k_scales(base: u32, j: u32) -> vec4<f32> {
    let dd = unpack2x16float(w[base]);
    let sm = k_scale_min(base, j);
    let dl = dd.x * f32(sm.x);
    let ml = -(dd.y * f32(sm.y));
    return vec4<f32>(dl, ml, dl, ml);
}
// 64-value group j/2 uses 32 bytes of nibbles: low for sub-block j even, high for odd
fn k_quants(base: u32, j: u32, i: u32) -> vec4<f32> {
    var q = k_bits(w[base + K_QS + 8u * (j / 2u) + i], 4u * (j % 2u), 15u);
    if (K_QS > 4u) {
        // Q5_K: value l of sub-block j takes bit j of qh[l] (the 8 words after the scales)
        q |= k_bits(w[base + 4u + i], j, 1u) << vec4<u32>(4u);
    }
    return vec4<f32>(q);
}
