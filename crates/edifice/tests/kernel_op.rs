//! The burn operation around the fused kernel: forward and gradients against
//! attention composed from burn's own differentiable ops.

use burn::tensor::{activation::softmax, Bool, Device, Tensor, TensorData};
use edifice::kernel::{attention, AttnSpec, Schedule, WeightLayout};
use edifice_kernels::{Pattern, PatternKind};

fn device() -> Device {
    Device::flex().autodiff()
}

fn random(dims: [usize; 4], seed: u32) -> Tensor<4> {
    let n = dims.iter().product();
    Tensor::from_data(
        TensorData::new(edifice_kernels::reference::uniform(n, seed), dims),
        &device(),
    )
}

/// softmax(scale q kᵀ masked) v with burn ops; `allowed(i, j)` decides the mask.
fn composed(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    scale: f32,
    allowed: impl Fn(usize, usize) -> bool,
) -> Tensor<4> {
    let [_, _, nq, _] = q.dims();
    let nk = k.dims()[2];
    let blocked: Vec<bool> = (0..nq * nk).map(|x| !allowed(x / nk, x % nk)).collect();
    let blocked = Tensor::<2, Bool>::from_data(TensorData::new(blocked, [nq, nk]), &device())
        .unsqueeze::<4>();
    let scores = q
        .matmul(k.swap_dims(2, 3))
        .mul_scalar(scale)
        .mask_fill(blocked, -1e30);
    softmax(scores, 3).matmul(v)
}

fn max_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
    a.sub(b).abs().max().into_scalar::<f32>()
}

/// Runs loss = Σ o ⊙ r through `op` and returns (o, dq, dk, dv).
fn run(
    op: impl Fn(Tensor<4>, Tensor<4>, Tensor<4>) -> Tensor<4>,
    dims_q: [usize; 4],
    dims_k: [usize; 4],
) -> [Tensor<4>; 4] {
    let (q, k, v) = (
        random(dims_q, 1).require_grad(),
        random(dims_k, 2).require_grad(),
        random(dims_k, 3).require_grad(),
    );
    let o = op(q.clone(), k.clone(), v.clone());
    let r = random(dims_q, 4);
    let grads = o.clone().mul(r).sum().backward();
    [
        o,
        q.grad(&grads).unwrap(),
        k.grad(&grads).unwrap(),
        v.grad(&grads).unwrap(),
    ]
}

fn check(
    pattern: Pattern,
    allowed: impl Fn(usize, usize) -> bool + Copy,
    dims_q: [usize; 4],
    dims_k: [usize; 4],
) {
    let scale = 1.0 / (dims_q[3] as f32).sqrt();
    let spec = AttnSpec::new(pattern.clone());
    let ours = run(|q, k, v| attention(q, k, v, &spec).unwrap(), dims_q, dims_k);
    let theirs = run(|q, k, v| composed(q, k, v, scale, allowed), dims_q, dims_k);
    for (what, (a, b)) in ["o", "dq", "dk", "dv"]
        .iter()
        .zip(ours.into_iter().zip(theirs))
    {
        let d = max_diff(a, b);
        assert!(d < 2e-5, "{pattern:?} {what}: max |diff| {d}");
    }
}

#[test]
fn causal_window_and_chunk_match_composed_ops() {
    let (q, k) = ([2, 3, 37, 16], [2, 3, 37, 16]);
    check(Pattern::new(PatternKind::Full, false), |_, _| true, q, k);
    check(Pattern::new(PatternKind::Full, true), |i, j| j <= i, q, k);
    check(
        Pattern::new(PatternKind::Window { window: 5 }, true),
        |i, j| j <= i && i - j < 5,
        q,
        k,
    );
    check(
        Pattern::new(PatternKind::Chunk { chunk: 8 }, true),
        |i, j| j <= i && i / 8 == j / 8,
        q,
        k,
    );
    // Cross attention, Nq != Nk.
    check(
        Pattern::new(PatternKind::Full, false),
        |_, _| true,
        [1, 2, 5, 8],
        [1, 2, 11, 8],
    );
}

#[test]
fn ring_schedule_matches_fused_forward_and_gradients() {
    let dims = [2, 2, 24, 8];
    let fused = AttnSpec::new(Pattern::new(PatternKind::Full, true));
    let ring = AttnSpec {
        schedule: Schedule::Ring { chunks: 4 },
        ..fused.clone()
    };
    let a = run(|q, k, v| attention(q, k, v, &fused).unwrap(), dims, dims);
    let b = run(|q, k, v| attention(q, k, v, &ring).unwrap(), dims, dims);
    for (x, y) in a.into_iter().zip(b) {
        assert!(max_diff(x, y) < 1e-5);
    }
}

/// `op` on a random `qkv` of `dims` (seed 7): its output and the gradient
/// of `Σ o ⊙ r` for a random `r` (seed 8) with respect to `qkv`.
fn packed_run(dims: [usize; 3], op: impl Fn(Tensor<3>) -> Tensor<3>) -> (Tensor<3>, Tensor<3>) {
    let qkv = random_n(dims, 7, 1.0).require_grad();
    let o = op(qkv.clone());
    let r = random_n(o.dims(), 8, 1.0);
    let grads = o.clone().mul(r).sum().backward();
    (o, qkv.grad(&grads).unwrap())
}

/// Attention on the packed projection against splitting it into heads,
/// attending and merging with burn's ops: output and `∂qkv`, for patterns
/// and both schedules.
#[test]
fn packed_attention_matches_split_heads() {
    use edifice::kernel::attention_packed;
    use edifice::layers::{merge_heads, split_heads};
    let (b, t, h, d) = (2, 24, 3, 8);
    let causal = AttnSpec::new(Pattern::new(PatternKind::Full, true));
    let specs = [
        causal.clone(),
        AttnSpec::new(Pattern::new(PatternKind::Window { window: 5 }, true)),
        AttnSpec::new(Pattern::new(PatternKind::Chunk { chunk: 8 }, true)),
        AttnSpec {
            schedule: Schedule::Ring { chunks: 4 },
            ..causal
        },
    ];
    for spec in specs {
        let (o1, g1) = packed_run([b, t, 3 * h * d], |qkv| {
            attention_packed(qkv, h, &spec).unwrap()
        });
        let (o2, g2) = packed_run([b, t, 3 * h * d], |qkv| {
            let [q, k, v] =
                [0, 1, 2].map(|i| split_heads(qkv.clone().narrow(2, i * h * d, h * d), h));
            merge_heads(attention(q, k, v, &spec).unwrap())
        });
        assert!(max_abs(o1, o2) < 1e-5, "{spec:?} o");
        assert!(max_abs(g1, g2) < 1e-5, "{spec:?} dqkv");
    }
    let (qkv, spec) = (
        random_n([1, 4, 3 * 8], 1, 1.0),
        AttnSpec::new(Pattern::new(PatternKind::Full, true)),
    );
    for heads in [0, 5] {
        let err = attention_packed(qkv.clone(), heads, &spec)
            .unwrap_err()
            .to_string();
        assert!(err.contains("3·heads·head_dim"), "{err}");
    }
}

/// The last `q` queries alone equal the last `q` rows of every query, with
/// the same `∂qkv` for a loss on those rows; too many queries, or the ring
/// schedule, are errors.
#[test]
fn packed_attention_tail_equals_the_last_rows() {
    use edifice::kernel::{attention_packed, attention_packed_tail};
    let (b, t, h, d) = (2, 20, 2, 8);
    let specs = [
        AttnSpec::new(Pattern::new(PatternKind::Full, true)),
        AttnSpec::new(Pattern::new(PatternKind::Window { window: 6 }, true)),
        AttnSpec::new(Pattern::new(PatternKind::Chunk { chunk: 8 }, true)),
        AttnSpec::new(Pattern::new(PatternKind::Full, false)),
    ];
    for spec in specs {
        for q in [1, 3, t] {
            let (o1, g1) = packed_run([b, t, 3 * h * d], |qkv| {
                attention_packed_tail(qkv, h, q, &spec).unwrap()
            });
            let (o2, g2) = packed_run([b, t, 3 * h * d], |qkv| {
                attention_packed(qkv, h, &spec).unwrap().narrow(1, t - q, q)
            });
            assert!(max_abs(o1, o2) < 1e-5, "{spec:?} {q} queries: o");
            assert!(max_abs(g1, g2) < 1e-5, "{spec:?} {q} queries: dqkv");
        }
    }
    let qkv = random_n([1, 4, 3 * 8], 1, 1.0);
    let spec = AttnSpec::new(Pattern::new(PatternKind::Full, true));
    assert!(attention_packed_tail(qkv.clone(), 1, 5, &spec).is_err());
    let ring = AttnSpec {
        schedule: Schedule::Ring { chunks: 2 },
        ..spec
    };
    assert!(attention_packed_tail(qkv, 1, 1, &ring).is_err());
}

#[test]
fn bad_inputs_are_errors() {
    let spec = AttnSpec::new(Pattern::new(PatternKind::Full, true));
    let error = |q: [usize; 4], kv: [usize; 4], spec: &AttnSpec| {
        attention(random(q, 1), random(kv, 2), random(kv, 3), spec)
            .unwrap_err()
            .to_string()
    };
    let err = error([1, 2, 4, 8], [1, 2, 4, 4], &spec);
    assert!(err.contains("head dim"), "{err}");
    let err = error([1, 3, 4, 8], [1, 2, 4, 8], &spec);
    assert!(err.contains("multiple"), "{err}");
    let ring = AttnSpec {
        schedule: Schedule::Ring { chunks: 3 },
        ..spec
    };
    let err = error([1, 2, 4, 8], [1, 2, 4, 8], &ring);
    assert!(err.contains("divisible"), "{err}");
}

/// The fused LSTM recurrence against the same LSTM composed from burn's ops:
/// outputs and the gradients of every parameter and of the input.
#[test]
fn fused_lstm_matches_burn_composed_lstm() {
    use edifice::layers::Lstm;
    for (batch, len, input, hidden) in [(3, 7, 5, 16), (2, 20, 12, 19), (1, 1, 3, 4)] {
        let lstm = Lstm::new(input, hidden, &device());
        let run = |fused: bool| {
            let x = Tensor::<3>::from_data(
                TensorData::new(
                    edifice_kernels::reference::uniform(batch * len * input, 5),
                    [batch, len, input],
                ),
                &device(),
            )
            .require_grad();
            let h = if fused {
                lstm.forward(x.clone()).unwrap()
            } else {
                lstm.forward_reference(x.clone())
            };
            let r = Tensor::<3>::from_data(
                TensorData::new(
                    edifice_kernels::reference::uniform(batch * len * hidden, 6),
                    [batch, len, hidden],
                ),
                &device(),
            );
            let grads = h.clone().mul(r).sum().backward();
            let flat = |t: Tensor<2>| -> Vec<f32> { t.into_data().try_to_vec().unwrap() };
            vec![
                h.into_data().try_to_vec::<f32>().unwrap(),
                x.grad(&grads).unwrap().into_data().try_to_vec().unwrap(),
                flat(lstm.weight_ih.val().grad(&grads).unwrap()),
                flat(lstm.weight_hh.val().grad(&grads).unwrap()),
                lstm.bias_ih
                    .val()
                    .grad(&grads)
                    .unwrap()
                    .into_data()
                    .try_to_vec()
                    .unwrap(),
                lstm.bias_hh
                    .val()
                    .grad(&grads)
                    .unwrap()
                    .into_data()
                    .try_to_vec()
                    .unwrap(),
            ]
        };
        let (ours, theirs) = (run(true), run(false));
        for (what, (a, b)) in ["h", "dx", "dW_ih", "dW_hh", "db_ih", "db_hh"]
            .iter()
            .zip(ours.iter().zip(&theirs))
        {
            let worst = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst < 2e-5,
                "lstm {batch}x{len}x{hidden} {what}: max |diff| {worst}"
            );
        }
    }
}

fn random_n<const D: usize>(dims: [usize; D], seed: u32, scale: f32) -> Tensor<D> {
    let n = dims.iter().product();
    let data = edifice_kernels::reference::uniform(n, seed)
        .into_iter()
        .map(|x| x * scale)
        .collect::<Vec<f32>>();
    Tensor::from_data(TensorData::new(data, dims), &device())
}

fn max_abs<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    a.sub(b).abs().max().into_scalar::<f32>()
}

#[test]
fn fused_gelu_matches_burn_gelu() {
    // Odd sizes exercise the vector tail; the range covers erf's clamp.
    let dims = [3, 7, 37];
    let run = |f: &dyn Fn(Tensor<3>) -> Tensor<3>| {
        let x = random_n(dims, 11, 7.0).require_grad();
        let y = f(x.clone());
        let grads = y.clone().mul(random_n(dims, 12, 1.0)).sum().backward();
        (y, x.grad(&grads).unwrap())
    };
    let (y, dx) = run(&|x| edifice::kernel::gelu(x));
    let (y_ref, dx_ref) = run(&|x| burn::tensor::activation::gelu(x));
    let (dy, ddx) = (max_abs(y, y_ref), max_abs(dx, dx_ref));
    assert!(dy < 2e-6, "gelu forward differs from burn's by {dy}");
    assert!(ddx < 2e-6, "gelu gradient differs from burn's by {ddx}");
}

#[test]
fn fused_layer_norm_matches_composed_ops() {
    // 287: Edifice's frame width (not a multiple of any vector width).
    let (dims, n, eps) = ([4, 9, 287], 287, 1e-5);
    let composed = |x: Tensor<3>, g: Tensor<1>, b: Tensor<1>| {
        let mean = x.clone().mean_dim(2);
        let c = x.sub(mean);
        let var = c.clone().mul(c.clone()).mean_dim(2);
        c.div(var.add_scalar(eps).sqrt())
            .mul(g.unsqueeze::<3>())
            .add(b.unsqueeze::<3>())
    };
    let run = |f: &dyn Fn(Tensor<3>, Tensor<1>, Tensor<1>) -> Tensor<3>| {
        let x = random_n(dims, 21, 3.0).add_scalar(1.5).require_grad();
        let g = random_n([n], 22, 1.0).add_scalar(1.0).require_grad();
        let b = random_n([n], 23, 1.0).require_grad();
        let y = f(x.clone(), g.clone(), b.clone());
        let grads = y.clone().mul(random_n(dims, 24, 1.0)).sum().backward();
        (
            y,
            x.grad(&grads).unwrap(),
            g.grad(&grads).unwrap(),
            b.grad(&grads).unwrap(),
        )
    };
    let ours = run(&|x, g, b| edifice::kernel::layer_norm(x, g, b, eps).unwrap());
    let theirs = run(&composed);
    let d = [
        max_abs(ours.0, theirs.0),
        max_abs(ours.1, theirs.1),
        max_abs(ours.2, theirs.2),
        max_abs(ours.3, theirs.3),
    ];
    // dγ and dβ sum 36 rows of O(1) terms.
    for (what, d, tol) in [
        ("y", d[0], 1e-5),
        ("dx", d[1], 1e-4),
        ("dgamma", d[2], 1e-4),
        ("dbeta", d[3], 1e-4),
    ] {
        assert!(
            d < tol,
            "layer norm {what} differs from composed ops by {d}"
        );
    }
    let err = edifice::kernel::layer_norm(
        random_n(dims, 1, 1.0),
        random_n([n - 1], 2, 1.0),
        random_n([n], 3, 1.0),
        eps,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("gamma [286]"), "{err}");
}

#[test]
fn fused_dropout_gradient_uses_the_forward_mask() {
    let (dims, keep) = ([4, 30, 65], 0.75);
    let x = random_n(dims, 31, 1.0).add_scalar(2.0).require_grad();
    let y = edifice::kernel::dropout(x.clone(), keep, 99).unwrap();
    let r = random_n(dims, 32, 1.0);
    let grads = y.clone().mul(r.clone()).sum().backward();
    let dx = x.grad(&grads).unwrap();
    // x > 0 everywhere, so y ≠ 0 exactly where the mask keeps.
    let kept = y.clone().inner().not_equal_elem(0.0).float();
    let want_y = x.clone().inner().mul_scalar(1.0 / keep).mul(kept.clone());
    let want_dx = r.inner().mul_scalar(1.0 / keep).mul(kept.clone());
    assert!(max_abs(y.inner(), want_y) < 1e-6);
    assert!(max_abs(dx, want_dx) < 1e-6);
    let share = kept.mean().into_scalar::<f32>();
    assert!((share - keep).abs() < 0.02, "kept {share}");
    assert!(edifice::kernel::dropout(x, 0.0, 1).is_err());
}

/// Our dense layer against burn's matmul, output and every gradient, with the
/// weight stored `[d_in, d_out]` or PyTorch's `[d_out, d_in]`.
fn check_linear(layout: WeightLayout) {
    let out_in = layout == WeightLayout::OutIn;
    let (dims, d_in, d_out) = ([3, 5, 7], 7, 11);
    let w_dims = if out_in { [d_out, d_in] } else { [d_in, d_out] };
    // `x_grad = false`: an input that needs no gradient (the backward then
    // skips `∂x`; the others must not change).
    let run = |f: &dyn Fn(Tensor<3>, Tensor<2>, Tensor<1>) -> Tensor<3>, x_grad: bool| {
        let x = random_n(dims, 41, 1.0);
        let x = if x_grad { x.require_grad() } else { x };
        let w = random_n(w_dims, 42, 1.0).require_grad();
        let b = random_n([d_out], 43, 1.0).require_grad();
        let y = f(x.clone(), w.clone(), b.clone());
        let r = random_n([3, 5, d_out], 44, 1.0);
        let grads = y.clone().mul(r).sum().backward();
        let dx = x.grad(&grads);
        assert_eq!(dx.is_some(), x_grad);
        [
            y.flatten::<1>(0, 2),
            dx.map_or_else(|| Tensor::zeros([1], &device()), |dx| dx.flatten::<1>(0, 2)),
            w.grad(&grads).unwrap().flatten::<1>(0, 1),
            b.grad(&grads).unwrap(),
        ]
    };
    let ours = |x, w, b| edifice::kernel::linear(x, w, b, layout).unwrap();
    let theirs = |x: Tensor<3>, w: Tensor<2>, b: Tensor<1>| {
        let w = if out_in { w.transpose() } else { w };
        x.matmul(w.unsqueeze::<3>()).add(b.unsqueeze::<3>())
    };
    for x_grad in [true, false] {
        for (what, (a, b)) in ["y", "dx", "dw", "db"]
            .iter()
            .zip(run(&ours, x_grad).into_iter().zip(run(&theirs, x_grad)))
        {
            let d = max_abs(a, b);
            assert!(
                d < 1e-5,
                "linear ({layout:?}, x_grad {x_grad}) {what} differs from burn's matmul by {d}"
            );
        }
    }
}

#[test]
fn fused_linear_matches_burn_matmul() {
    check_linear(WeightLayout::InOut);
    let err = edifice::kernel::linear(
        random_n([3, 5, 7], 1, 1.0),
        random_n([6, 11], 2, 1.0),
        random_n([11], 3, 1.0),
        WeightLayout::InOut,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("[6 → 11]"), "{err}");
}

#[test]
fn fused_linear_reads_pytorch_layout_weights_in_place() {
    check_linear(WeightLayout::OutIn);
}
