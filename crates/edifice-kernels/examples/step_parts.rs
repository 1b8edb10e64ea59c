//! What one stream step is made of, timed piece by piece, and how fast this
//! core reads memory: the floor under a step whose weights do not fit its
//! L2 cache (see BENCHMARKS.md, "Streaming").
//!
//! ```sh
//! cargo run --release -p edifice-kernels --example step_parts          # the pieces
//! cargo run --release -p edifice-kernels --example step_parts -- read  # read bandwidth
//! ```

use std::time::Instant;

use edifice_kernels::linear::WeightLayout;
use edifice_kernels::reference::uniform;
use edifice_kernels::step::{attend, Dense, KeyRange, KvCache};

/// Mean µs per call of `f` over `n` calls, after `n / 10` warm-up calls.
fn time(name: &str, n: usize, mut f: impl FnMut()) {
    (0..n / 10).for_each(|_| f());
    let t = Instant::now();
    (0..n).for_each(|_| f());
    println!(
        "{name:34} {:8.2} µs",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}

fn main() {
    if std::env::args().any(|a| a == "read") {
        return read_bandwidth();
    }
    let v = |n: usize| uniform(n, n as u32);
    for (d_in, d_out) in [(287, 256), (256, 768), (256, 256), (543, 1024)] {
        let layer = Dense::new(&v(d_in * d_out), WeightLayout::InOut, d_in, &v(d_out)).unwrap();
        let xs: Vec<Vec<f32>> = (0..4).map(|r| uniform(d_in, r)).collect();
        let mut ys = vec![vec![0.0; d_out]; 4];
        time(&format!("dense {d_in}x{d_out}, 1 row, in L2"), 5000, || {
            layer.row(&xs[0], &mut ys[0]).unwrap()
        });
        time(
            &format!("dense {d_in}x{d_out}, 4 rows, in L2"),
            2000,
            || {
                let x: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
                let mut y: Vec<&mut [f32]> = ys.iter_mut().map(Vec::as_mut_slice).collect();
                layer.rows(&x, &mut y).unwrap()
            },
        );
    }
    // Twelve layers (9.4 MB) do not fit L2: each comes from L3.
    let layers: Vec<Dense> = (0..12)
        .map(|_| Dense::new(&v(256 * 768), WeightLayout::InOut, 256, &v(768)).unwrap())
        .collect();
    let (x, mut y) = (v(256), vec![0.0; 768]);
    time("dense 256x768, 1 row, from L3", 200, || {
        for layer in &layers {
            layer.row(&x, &mut y).unwrap();
        }
    });
    let mut cache = KvCache::new(67, 256);
    for p in 0..200 {
        cache.write(p, &v(256), &v(256)).unwrap();
    }
    let (q, mut scores, mut o) = (v(256), vec![0.0; 4 * cache.cap()], vec![0.0; 256]);
    let window = KeyRange {
        first: 140,
        last: 199,
        allow: None,
    };
    time("attend, 4 heads of 64, 60 keys", 20000, || {
        attend(&cache, &q, 4, 0.125, window, &mut scores, &mut o).unwrap()
    });
    let (g, b) = (v(256), v(256));
    time("layer norm 256", 100000, || {
        edifice_kernels::layer_norm::row(&x, &g, &b, 1e-5, &mut o).unwrap()
    });
    time("gelu 256", 100000, || {
        edifice_kernels::gelu::forward_serial(&x, &mut o).unwrap()
    });
}

/// µs to read buffers of 1 to 8 MB, over and over.
fn read_bandwidth() {
    for mb in [1.0f64, 1.5, 2.0, 2.9, 4.0, 8.0] {
        let a = vec![1.0f32; (mb * 1e6 / 4.0) as usize];
        let mut acc = [0f32; 16];
        time(&format!("read {mb} MB"), 300, || {
            for c in a.chunks_exact(16) {
                acc.iter_mut().zip(c).for_each(|(s, x)| *s += x);
            }
        });
        std::hint::black_box(acc);
    }
}
