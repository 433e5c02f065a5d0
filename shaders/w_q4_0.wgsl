// Repacked Q4_0: 4 words of nibbles per block (byte j: value j low, value j+16 high), then f16
// scales two per word. The nibble decoding is shared with Q4_1 (w_q4.wgsl, appended).
@group(0) @binding(1) var<storage, read> w: array<u32>;
// what dequantizes the nibbles of block `blk`: its scale (Q4_0 has no minimum)
fn q4_params(blk: u32) -> vec2<f32> {
    let dd = unpack2x16float(w[p.d_off + (blk >> 1u)]);
    return vec2<f32>(select(dd.x, dd.y, (blk & 1u) == 1u), 0.0);
}
fn q4_value(s: vec2<f32>, q: f32) -> f32 {
    return s.x * (q - 8.0);
}
fn q4_value4(s: vec2<f32>, q: vec4<f32>) -> vec4<f32> {
    return s.x * (q - 8.0);
}
