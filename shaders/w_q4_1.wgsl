// Repacked Q4_1: 4 words of nibbles per block, then f16 scales and f16 minimums two per word.
// The nibble decoding is shared with Q4_0 (w_q4.wgsl, appended).
@group(0) @binding(1) var<storage, read> w: array<u32>;
// what dequantizes the nibbles of block `blk`: its scale and minimum
fn q4_params(blk: u32) -> vec2<f32> {
    let dd = unpack2x16float(w[p.d_off + (blk >> 1u)]);
    let mm = unpack2x16float(w[p.m_off + (blk >> 1u)]);
    let odd = (blk & 1u) == 1u;
    return vec2<f32>(select(dd.x, dd.y, odd), select(mm.x, mm.y, odd));
}
fn q4_value(s: vec2<f32>, q: f32) -> f32 {
    return s.x * q + s.y;
}
fn q4_value4(s: vec2<f32>, q: vec4<f32>) -> vec4<f32> {
    return s.x * q + s.y;
}
