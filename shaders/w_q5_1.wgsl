// Repacked Q5_1: the 5th bits and 4 words of nibbles per block, then f16 scales, then f16
// minimums; value = d·q + m.
const QW: u32 = 5u;
const Q_MIN: bool = true;
const Q_MID: f32 = 0.0;
