//! Storage types of `q`, `k`, `v` and `o`: f32, or bf16 with f32
//! accumulation.
//!
//! With bf16 the forward kernel reads half the bytes and computes its tile
//! products in one of two ways ([`Products`]):
//! * [`Widen`]: each key tile's K and V rows, and each query tile, are
//!   widened to f32 (exact) and multiplied by the f32 kernels. The only
//!   rounding beyond the f32 kernel's is that of `o` to bf16.
//! * [`Pairs`]: bf16 products in pairs along the reduction with
//!   `vdpbf16ps`, f32 sums. P is rounded to bf16 before P·V (as
//!   FlashAttention does on GPUs). Chosen by default where `vdpbf16ps`
//!   retires as fast as an f32 FMA (twice the FLOP rate; AMD Zen 4), not
//!   where it retires at a quarter of it (the Intel vCPUs these kernels were
//!   first measured on): see [`crate::calibrate`]. Forced with
//!   [`Isa::Avx512Bf16`](crate::Isa); on a CPU without AVX512-BF16 the pair
//!   products are emulated.
//!
//! Every sum, the online softmax and `lse` are f32 either way.

// `sealed::Storage` is public only in name (its module is private, so no
// one outside the crate can name or implement it): its methods take the
// crate's kernel types on purpose.
#![allow(private_interfaces, private_bounds)]

use half::bf16;

use crate::simd::{Isa, Operand, Pair, Simd};
use crate::tile::{load_transposed, Bounds, KeyRows, RankUpdate, TILE_K, TILE_Q};
use crate::{Attention, Bf16Products};

/// A storage type of the attention tensors: `f32` or [`half::bf16`].
pub trait Element: sealed::Storage {
    /// `"f32"` or `"bf16"`.
    const NAME: &'static str;
    /// Widens to f32 (exact for both types).
    fn to_f32(self) -> f32;
    /// Rounds to nearest (ties to even).
    fn from_f32(x: f32) -> Self;
}

impl Element for f32 {
    const NAME: &'static str = "f32";
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(x: f32) -> f32 {
        x
    }
}

impl Element for bf16 {
    const NAME: &'static str = "bf16";
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(x: f32) -> bf16 {
        bf16::from_f32(x)
    }
}

/// Widens `x` to f32 (a copy for bf16, a borrow for f32).
pub(crate) fn widen<E: Element>(x: &[E]) -> std::borrow::Cow<'_, [f32]> {
    match E::as_f32(x) {
        Some(x) => std::borrow::Cow::Borrowed(x),
        None => x.iter().map(|v| v.to_f32()).collect(),
    }
}

pub(crate) mod sealed {
    use super::*;

    /// What the kernels need of a storage type; sealed, so that `Element`
    /// stays implementable only here.
    pub trait Storage:
        Copy + Default + PartialEq + std::fmt::Debug + Send + Sync + 'static
    {
        /// `Some(x)` when the type is f32.
        fn as_f32(x: &[Self]) -> Option<&[f32]>;

        /// Runs `f` on f32 views of `outs`: the buffers themselves for f32,
        /// f32 copies rounded into them afterwards for bf16.
        fn with_f32_outputs<const N: usize>(
            outs: [&mut [Self]; N],
            f: impl FnOnce([&mut [f32]; N]),
        );

        /// Copies one row (`from` and `to` have the same length).
        fn copy_row<S: Simd>(simd: S, from: &[Self], to: &mut [Self]);

        /// Widens one row to f32 (`from` and `to` have the same length).
        fn widen_row<S: Simd>(simd: S, from: &[Self], to: &mut [f32]);

        /// Runs `op` with the [`Products`] this type uses for `att`.
        fn with_products<Op: ForProducts<Self>>(att: &Attention, op: Op) -> Op::Output;
    }
}

/// An operation generic over the [`Products`] of storage type `E`.
pub(crate) trait ForProducts<E> {
    type Output;
    fn run<P: Products<E>>(self) -> Self::Output;
}

/// How the forward kernel's tile products read storage type `E`: which
/// operand element they multiply ([`Operand`]) and how query tiles, K and V
/// rows become operands.
pub(crate) trait Products<E>: Send + Sync + 'static {
    type Op: Operand;

    /// The instruction set the products run on, given the attention's.
    fn isa(att: Isa) -> Isa {
        att
    }

    /// Loads a query tile (`x`: up to `TILE_Q` rows of `d`) as the
    /// transposed operand `qt`, `[d / TERMS, TILE_Q]`, with rows past `x`
    /// zero. Returns the factor the scores still need: f32 operands fold
    /// `factor` into `qt`; pairs leave the stored values as they are and
    /// scale the f32 scores instead (no second rounding).
    fn load_q(x: &[E], d: usize, factor: f32, qt: &mut [Self::Op]) -> Option<f32>;

    /// Elements of the K-rows scratch of `k_rows` for head dimension `d`.
    fn k_ops_len(d: usize) -> usize;

    /// A key tile's K rows as operands (`buf`: scratch of
    /// [`k_ops_len`](Self::k_ops_len) elements).
    fn k_rows<'a, S: Simd>(
        simd: S,
        k: KeyRows<'a, E>,
        n_keys: usize,
        d: usize,
        buf: &'a mut [Self::Op],
    ) -> KeyRows<'a, Self::Op>;

    /// The forward pass's P·V for one key tile (see [`PvTile`]); `p_ops`
    /// and `v_ops` are scratch of [`p_ops_len`](Self::p_ops_len) and
    /// `TILE_K · d` elements.
    fn p_times_v<S: Simd>(
        simd: S,
        tile: PvTile<E>,
        p_ops: &mut [Self::Op],
        v_ops: &mut [Self::Op],
        acc: &mut [f32],
    );

    /// Elements of the packed-P scratch of `p_times_v`.
    fn p_ops_len() -> usize {
        0
    }
}

/// `acc[i, :] = alpha[i] · acc[i, :] + Σ_j p[j·TILE_Q + i] · v[j, :]` over
/// one key tile's `n_keys` keys, for the query rows of a tile (`live`: the
/// per-row key bounds of a partial tile).
pub(crate) struct PvTile<'a, E> {
    pub p: &'a [f32],
    pub v: KeyRows<'a, E>,
    pub n_keys: usize,
    pub d: usize,
    pub live: Option<&'a Bounds>,
    pub alpha: &'a [f32],
}

impl<'a, E> PvTile<'a, E> {
    /// The rank update of this tile with its P and V as operands `p_ops`
    /// and `v_ops`.
    #[inline(always)]
    fn update<T: Operand>(&self, p_ops: &'a [T], v_ops: KeyRows<'a, T>) -> RankUpdate<'a, T> {
        RankUpdate::by_queries(
            p_ops,
            v_ops,
            self.n_keys,
            TILE_Q,
            self.live,
            Some(self.alpha),
        )
    }
}

/// f32 products: f32 storage read in place, bf16 widened to f32 (exact)
/// tile by tile.
pub(crate) struct Widen;

/// bf16 storage, bf16 pair products summed in f32.
pub(crate) struct Pairs;

impl sealed::Storage for f32 {
    fn as_f32(x: &[f32]) -> Option<&[f32]> {
        Some(x)
    }

    fn with_f32_outputs<const N: usize>(outs: [&mut [f32]; N], f: impl FnOnce([&mut [f32]; N])) {
        f(outs)
    }

    /// Vector moves in line, since `copy_from_slice` calls memmove, whose
    /// start-up cost is large against 256-byte rows.
    #[inline(always)]
    fn copy_row<S: Simd>(simd: S, from: &[f32], to: &mut [f32]) {
        assert!(from.len() == to.len() && to.len().is_multiple_of(S::LANES));
        for c in (0..to.len()).step_by(S::LANES) {
            // SAFETY: c + LANES ≤ len of both rows.
            unsafe { simd.store(to.as_mut_ptr().add(c), simd.load(from.as_ptr().add(c))) }
        }
    }

    #[inline(always)]
    fn widen_row<S: Simd>(simd: S, from: &[f32], to: &mut [f32]) {
        Self::copy_row(simd, from, to)
    }

    fn with_products<Op: ForProducts<f32>>(_: &Attention, op: Op) -> Op::Output {
        op.run::<Widen>()
    }
}

impl sealed::Storage for bf16 {
    fn as_f32(_: &[bf16]) -> Option<&[f32]> {
        None
    }

    fn with_f32_outputs<const N: usize>(outs: [&mut [bf16]; N], f: impl FnOnce([&mut [f32]; N])) {
        let mut wide = outs.each_ref().map(|o| vec![0.0f32; o.len()]);
        f(wide.each_mut().map(|w| &mut w[..]));
        for (out, wide) in outs.into_iter().zip(wide) {
            for (o, w) in out.iter_mut().zip(wide) {
                *o = bf16::from_f32(w);
            }
        }
    }

    #[inline(always)]
    fn copy_row<S: Simd>(_: S, from: &[bf16], to: &mut [bf16]) {
        to.copy_from_slice(from);
    }

    #[inline(always)]
    fn widen_row<S: Simd>(simd: S, from: &[bf16], to: &mut [f32]) {
        assert!(from.len() == to.len() && to.len().is_multiple_of(S::LANES));
        for c in (0..to.len()).step_by(S::LANES) {
            // SAFETY: c + LANES ≤ len of both rows.
            unsafe { simd.store(to.as_mut_ptr().add(c), simd.widen(from.as_ptr().add(c))) }
        }
    }

    fn with_products<Op: ForProducts<bf16>>(att: &Attention, op: Op) -> Op::Output {
        match att.bf16_products() {
            Bf16Products::Pairs => op.run::<Pairs>(),
            Bf16Products::Widen => op.run::<Widen>(),
        }
    }
}

impl<E: Element> Products<E> for Widen {
    type Op = f32;

    /// f32 K rows are read in place.
    fn k_ops_len(d: usize) -> usize {
        if E::as_f32(&[]).is_some() {
            0
        } else {
            TILE_K * d
        }
    }

    #[inline(always)]
    fn load_q(x: &[E], d: usize, factor: f32, qt: &mut [f32]) -> Option<f32> {
        load_transposed(x, d, factor, qt);
        None
    }

    #[inline(always)]
    fn k_rows<'a, S: Simd>(
        simd: S,
        k: KeyRows<'a, E>,
        n_keys: usize,
        d: usize,
        buf: &'a mut [f32],
    ) -> KeyRows<'a, f32> {
        match E::as_f32(k.data) {
            Some(data) => KeyRows {
                data,
                stride: k.stride,
            },
            None => widened_rows(simd, k, n_keys, d, buf),
        }
    }

    /// V rows in place when they are f32 and contiguous, else widened (or,
    /// for f32 rows a stride apart, copied) contiguous: update kernels read
    /// a tile's rows once per block of query rows, and rows a power-of-two
    /// stride apart (a strided pattern's keys) fall into a few L1 sets.
    #[inline(always)]
    fn p_times_v<S: Simd>(
        simd: S,
        tile: PvTile<E>,
        _: &mut [f32],
        v_ops: &mut [f32],
        acc: &mut [f32],
    ) {
        let (v, n_keys, d) = (tile.v, tile.n_keys, tile.d);
        let v = match E::as_f32(v.data) {
            Some(data) if v.stride == d => KeyRows { data, stride: d },
            _ => widened_rows(simd, v, n_keys, d, v_ops),
        };
        tile.update(tile.p, v).apply(simd, d, acc, d);
    }
}

/// The first `n_keys` of `rows` widened to f32 into `buf`, contiguous.
#[inline(always)]
fn widened_rows<'a, S: Simd, E: Element>(
    simd: S,
    rows: KeyRows<'a, E>,
    n_keys: usize,
    d: usize,
    buf: &'a mut [f32],
) -> KeyRows<'a, f32> {
    for (t, row) in buf.chunks_exact_mut(d).take(n_keys).enumerate() {
        E::widen_row(simd, &rows.data[t * rows.stride..][..d], row);
    }
    KeyRows {
        data: &buf[..n_keys * d],
        stride: d,
    }
}

impl Products<bf16> for Pairs {
    type Op = Pair;

    /// `vdpbf16ps` where the attention runs on AVX-512 (chosen for its f32
    /// code, which AVX512-BF16 shares).
    fn isa(att: Isa) -> Isa {
        match att {
            Isa::Avx512 => Isa::Avx512Bf16,
            other => other,
        }
    }

    /// K rows are read in place, as pairs.
    fn k_ops_len(_: usize) -> usize {
        0
    }

    #[inline(always)]
    fn load_q(x: &[bf16], d: usize, factor: f32, qt: &mut [Pair]) -> Option<f32> {
        let (pairs, _) = x.as_chunks::<2>();
        let width = d / 2;
        let n_rows = x.len() / d;
        for (i, row) in pairs.chunks_exact(width).enumerate() {
            for (dd, &pair) in row.iter().enumerate() {
                qt[dd * TILE_Q + i] = pair;
            }
        }
        for dd in 0..width {
            qt[dd * TILE_Q + n_rows..(dd + 1) * TILE_Q].fill([bf16::ZERO; 2]);
        }
        Some(factor)
    }

    #[inline(always)]
    fn k_rows<'a, S: Simd>(
        _: S,
        k: KeyRows<'a, bf16>,
        _: usize,
        _: usize,
        _: &'a mut [Pair],
    ) -> KeyRows<'a, Pair> {
        // Whole rows of even length: pairs never straddle two rows.
        let whole = k.data.len() - k.data.len() % 2;
        KeyRows {
            data: k.data[..whole].as_chunks::<2>().0,
            stride: k.stride / 2,
        }
    }

    /// Packs P and V into pairs of consecutive keys (an odd last key is
    /// paired with a zero probability) and runs the pair rank update.
    #[inline(always)]
    fn p_times_v<S: Simd>(
        simd: S,
        tile: PvTile<bf16>,
        p_ops: &mut [Pair],
        v_ops: &mut [Pair],
        acc: &mut [f32],
    ) {
        let (v, n_keys, d) = (tile.v, tile.n_keys, tile.d);
        assert!(d.is_multiple_of(S::LANES));
        let pairs = n_keys.div_ceil(2);
        let p = tile.p;
        assert!(p.len() >= n_keys * TILE_Q && p_ops.len() >= pairs * TILE_Q);
        assert!(v_ops.len() >= pairs * d && v.data.len() >= (n_keys - 1) * v.stride + d);
        for q in 0..pairs {
            let (lo, hi) = (2 * q, (2 * q + 1).min(n_keys - 1));
            let odd = hi == lo;
            // SAFETY: the assertions above bound every row read and written.
            unsafe {
                for i0 in (0..TILE_Q).step_by(S::LANES) {
                    let p_lo = simd.load(p.as_ptr().add(lo * TILE_Q + i0));
                    let p_hi = if odd {
                        simd.splat(0.0)
                    } else {
                        simd.load(p.as_ptr().add(hi * TILE_Q + i0))
                    };
                    let packed = simd.pack_pairs(p_lo, p_hi);
                    simd.store_pairs(p_ops.as_mut_ptr().add(q * TILE_Q + i0), packed);
                }
                let v_lo = v.data.as_ptr().add(lo * v.stride);
                let v_hi = v.data.as_ptr().add(hi * v.stride);
                for c in (0..d).step_by(S::LANES) {
                    let zipped = simd.zip_rows(v_lo.add(c), v_hi.add(c));
                    simd.store_pairs(v_ops.as_mut_ptr().add(q * d + c), zipped);
                }
            }
        }
        let v = KeyRows {
            data: &v_ops[..pairs * d],
            stride: d,
        };
        tile.update(&p_ops[..], v).apply(simd, d, acc, d);
    }

    fn p_ops_len() -> usize {
        crate::tile::S_ROWS.div_ceil(2) * TILE_Q
    }
}
