// Repacked Q8_0: 8 words of quants per block, then f16 scales two per word.
@group(0) @binding(1) var<storage, read> w: array<u32>;
fn load_w(row: u32, c: u32) -> f32 {
    let blk = row * (p.cols / 32u) + c / 32u;
    let j = c % 32u;
    let q = extractBits(i32(w[p.q_off + blk * 8u + j / 4u]), (j % 4u) * 8u, 8u);
    let dd = unpack2x16float(w[p.d_off + (blk >> 1u)]);
    let d = select(dd.x, dd.y, (blk & 1u) == 1u);
    return d * f32(q);
}
// c is a multiple of 4: one word of quants
fn load4(row: u32, c: u32) -> vec4<f32> {
    let blk = row * (p.cols / 32u) + c / 32u;
    let word = i32(w[p.q_off + blk * 8u + (c % 32u) / 4u]);
    let q = vec4<i32>(extractBits(word, 0u, 8u), extractBits(word, 8u, 8u),
                      extractBits(word, 16u, 8u), extractBits(word, 24u, 8u));
    let dd = unpack2x16float(w[p.d_off + (blk >> 1u)]);
    return select(dd.x, dd.y, (blk & 1u) == 1u) * vec4<f32>(q);
}
