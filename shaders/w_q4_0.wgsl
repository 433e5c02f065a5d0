// Repacked Q4_0: 4 words of nibbles per block, then f16 scales; value = d·(q − 8).
const QW: u32 = 4u;
const Q_MIN: bool = false;
const Q_MID: f32 = 8.0;
