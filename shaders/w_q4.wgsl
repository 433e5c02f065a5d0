// Blocks of 32 with 4-bit values and an optional 5th bit (Q4_0, Q4_1, Q5_0, Q5_1): the layout
// they share. Per block the quant region holds QW words: for the 5-bit types one word of 5th bits
// (bit j for value j), then for all four words of nibbles (byte j: value j low, value j+16 high).
// The f16 scales follow two per word, then (with Q_MIN) the f16 minimums two per word. The type's
// snippet before this one gives `QW`, `Q_MIN` and `Q_MID` (subtracted from the quants).
@group(0) @binding(1) var<storage, read> w: array<u32>;
// the 5th bits of block `blk` (0 for the 4-bit types)
fn q_high(blk: u32) -> u32 {
    if (QW == 4u) {
        return 0u;
    }
    return w[p.q_off + blk * QW];
}
// 5th bits v..v+3 of `h`, in place (16) or not (0)
fn q_high4(h: u32, v: u32) -> vec4<u32> {
    return ((vec4<u32>(h >> v) >> vec4<u32>(0u, 1u, 2u, 3u)) & vec4<u32>(1u)) << vec4<u32>(4u);
}
// what dequantizes block `blk`: its scale and minimum
fn q4_params(blk: u32) -> vec2<f32> {
    let odd = (blk & 1u) == 1u;
    let dd = unpack2x16float(w[p.d_off + (blk >> 1u)]);
    var m = 0.0;
    if (Q_MIN) {
        let mm = unpack2x16float(w[p.m_off + (blk >> 1u)]);
        m = select(mm.x, mm.y, odd);
    }
    return vec2<f32>(select(dd.x, dd.y, odd), m);
}
fn q4_value4(s: vec2<f32>, q: vec4<u32>) -> vec4<f32> {
    return s.x * (vec4<f32>(q) - Q_MID) + s.y;
}
fn load_w(row: u32, c: u32) -> f32 {
    let blk = row * (p.cols / 32u) + c / 32u;
    let j = c % 32u;
    let jj = j % 16u;
    let byte = (w[p.q_off + blk * QW + QW - 4u + jj / 4u] >> ((jj % 4u) * 8u)) & 0xffu;
    let q = select(byte & 0xfu, byte >> 4u, j >= 16u) | (((q_high(blk) >> j) & 1u) << 4u);
    return q4_value4(q4_params(blk), vec4<u32>(q)).x;
}
// c is a multiple of 4: four nibbles of one word
fn load4(row: u32, c: u32) -> vec4<f32> {
    let blk = row * (p.cols / 32u) + c / 32u;
    let j = c % 32u;
    let word = w[p.q_off + blk * QW + QW - 4u + (j % 16u) / 4u] >> select(0u, 4u, j >= 16u);
    let q = (vec4<u32>(word) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xfu);
    return q4_value4(q4_params(blk), q | q_high4(q_high(blk), j));
}
