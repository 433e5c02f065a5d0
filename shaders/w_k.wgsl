// K-quant super-blocks of 256 values, each kept as in the file and padded to KW words. The
// type's snippet before this one gives `KW`, `k_scales(base, j)` and `k_quants(base, j, i)` for
// the super-block at word `base`: its 32-value sub-block j (0..8) is s.x·q + s.y for values
// 0..16 and s.z·q + s.w for values 16..32, with s = k_scales(base, j) and values 4i..4i+3 of q
// from k_quants(base, j, i).
@group(0) @binding(1) var<storage, read> w: array<u32>;
// byte `off` of the super-block at word `base`
fn k_byte(base: u32, off: u32) -> u32 {
    return (w[base + off / 4u] >> (8u * (off % 4u))) & 0xffu;
}
// bits shift..shift+width of each byte of `word` (shift + width <= 8), `mask` = 2^width − 1
fn k_bits(word: u32, shift: u32, mask: u32) -> vec4<u32> {
    return (vec4<u32>(word >> shift) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(mask);
}
// word of the super-block holding column c of `row`
fn k_base(row: u32, c: u32) -> u32 {
    return p.q_off + (row * (p.cols / 256u) + c / 256u) * KW;
}
// c is a multiple of 4
fn load4(row: u32, c: u32) -> vec4<f32> {
    let base = k_base(row, c);
    let j = (c % 256u) / 32u;
    let i = (c % 32u) / 4u;
    let s = k_scales(base, j);
    let h = select(s.xy, s.zw, i >= 4u);
    return h.x * k_quants(base, j, i) + h.y;
}
fn load_w(row: u32, c: u32) -> f32 {
    let v = load4(row, c & ~3u);
    return v[c % 4u];
}
