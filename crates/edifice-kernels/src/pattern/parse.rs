//! Patterns from strings: `window:256`, `strided:8:16|global:4`, ...

use super::PatternKind;
use crate::KernelError;

/// The string form of each kind with parameters: `name:arg:...` and how
/// the whole numbers become the kind.
/// One kind's string form: its name, its parameters' names, and how their
/// values become the kind.
type Syntax = (
    &'static str,
    &'static [&'static str],
    fn(&[usize]) -> PatternKind,
);

const SYNTAX: &[Syntax] = &[
    ("full", &[], |_| PatternKind::Full),
    ("window", &["window"], |a| PatternKind::Window {
        window: a[0],
    }),
    ("chunk", &["chunk"], |a| PatternKind::Chunk { chunk: a[0] }),
    ("strided", &["stride", "local"], |a| PatternKind::Strided {
        stride: a[0],
        local: a[1],
    }),
    ("shifted", &["group"], |a| PatternKind::Shifted {
        group: a[0],
    }),
    ("global", &["global tokens"], |a| PatternKind::Global {
        tokens: a[0],
    }),
];

impl std::str::FromStr for PatternKind {
    type Err = KernelError;

    /// Parses `full`, `window:W`, `chunk:C`, `strided:S:L`, `shifted:G`,
    /// `global:G`, or a union of those joined by `|` (`strided:8:16|global:4`).
    /// (`mask` needs the mask tensor: build [`PatternKind::Mask`] directly.)
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains('|') {
            let kinds = s
                .split('|')
                .map(str::parse)
                .collect::<Result<Vec<PatternKind>, _>>()?;
            return Ok(PatternKind::Union(kinds));
        }
        let parts: Vec<&str> = s.trim().split(':').collect();
        if parts == ["mask"] {
            return Err(KernelError::Pattern(
                "pattern `mask` needs a mask tensor; it cannot be parsed from a string alone"
                    .into(),
            ));
        }
        let Some((_, names, build)) = SYNTAX
            .iter()
            .find(|(name, args, _)| parts[0] == *name && parts.len() == args.len() + 1)
        else {
            return Err(KernelError::Pattern(format!(
                "unknown pattern `{s}`; expected full, window:W, chunk:C, strided:S:L, shifted:G, global:G, mask, or a union A|B"
            )));
        };
        let args = parts[1..]
            .iter()
            .zip(names.iter())
            .map(|(p, what)| {
                p.trim().parse::<usize>().map_err(|_| {
                    KernelError::Pattern(format!(
                        "{what} in pattern `{s}` must be a whole number, got `{p}`"
                    ))
                })
            })
            .collect::<Result<Vec<usize>, _>>()?;
        let kind = build(&args);
        kind.check_sizes()?;
        Ok(kind)
    }
}
