// 4-bit blocks of 32 (Q4_0, Q4_1): the nibble layout both share. The type's snippet before this
// one gives `q4_params(blk)` and `q4_value`/`q4_value4(params, nibbles)`.
fn load_w(row: u32, c: u32) -> f32 {
    let blk = row * (p.cols / 32u) + c / 32u;
    let j = c % 32u;
    let jj = j % 16u;
    let byte = (w[p.q_off + blk * 4u + jj / 4u] >> ((jj % 4u) * 8u)) & 0xffu;
    let q = select(byte & 0xfu, byte >> 4u, j >= 16u);
    return q4_value(q4_params(blk), f32(q));
}
// c is a multiple of 4: four nibbles of one word
fn load4(row: u32, c: u32) -> vec4<f32> {
    let blk = row * (p.cols / 32u) + c / 32u;
    let j = c % 32u;
    let word = w[p.q_off + blk * 4u + (j % 16u) / 4u] >> select(0u, 4u, j >= 16u);
    let q = vec4<u32>(word & 0xfu, (word >> 8u) & 0xfu, (word >> 16u) & 0xfu, (word >> 24u) & 0xfu);
    return q4_value4(q4_params(blk), vec4<f32>(q));
}
// 32-column block `b` of `row` as 8 vec4 (columns 4j..4j+3 in element j); cols % 32 == 0
fn wblock(row: u32, b: u32) -> array<vec4<f32>, 8> {
    let blk = row * (p.cols / 32u) + b;
    let s = q4_params(blk);
    let q = p.q_off + blk * 4u;
    let w0 = w[q];
    let w1 = w[q + 1u];
    let w2 = w[q + 2u];
    let w3 = w[q + 3u];
    let sh = vec4<u32>(0u, 8u, 16u, 24u);
    let lo = vec4<u32>(0xfu);
    return array<vec4<f32>, 8>(
        q4_value4(s, vec4<f32>((vec4<u32>(w0) >> sh) & lo)),
        q4_value4(s, vec4<f32>((vec4<u32>(w1) >> sh) & lo)),
        q4_value4(s, vec4<f32>((vec4<u32>(w2) >> sh) & lo)),
        q4_value4(s, vec4<f32>((vec4<u32>(w3) >> sh) & lo)),
        q4_value4(s, vec4<f32>((vec4<u32>(w0 >> 4u) >> sh) & lo)),
        q4_value4(s, vec4<f32>((vec4<u32>(w1 >> 4u) >> sh) & lo)),
        q4_value4(s, vec4<f32>((vec4<u32>(w2 >> 4u) >> sh) & lo)),
        q4_value4(s, vec4<f32>((vec4<u32>(w3 >> 4u) >> sh) & lo)),
    );
}
