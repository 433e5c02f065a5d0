// Repacked Q4_1: 4 words of nibbles per block, then f16 scales, then f16 minimums;
// value = d·q + m.
const QW: u32 = 4u;
const Q_MIN: bool = true;
const Q_MID: f32 = 0.0;
