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
