//! Consistency: a structured file (safetensors) rewritten with another layout.

use super::*;

/// The tensors of a safetensors buffer, as (name, dtype, shape, data).
pub(super) type Tensors = Vec<(String, String, Vec<usize>, Vec<u8>)>;

pub(super) fn tensor_bytes(n: usize, seed: u64) -> Vec<u8> {
    (0..n as u64)
        .map(|i| (i.wrapping_mul(0x9e37_79b9).wrapping_add(seed) >> 7) as u8)
        .collect()
}

/// Serializes tensors `(name, dtype, shape)` filled with seeded bytes.
pub(super) fn safetensors_file(
    spec: &[(&str, safetensors::Dtype, &[usize])],
    seed: u64,
) -> Vec<u8> {
    let data: Vec<(String, Vec<u8>, safetensors::Dtype, Vec<usize>)> = spec
        .iter()
        .enumerate()
        .map(|(k, &(name, dtype, shape))| {
            let n = shape.iter().product::<usize>() * dtype.bitsize() / 8;
            (
                name.to_string(),
                tensor_bytes(n, seed + k as u64),
                dtype,
                shape.to_vec(),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(name, bytes, dtype, shape)| {
            let v = safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .expect("valid tensor");
            (name.clone(), v)
        })
        .collect();
    safetensors::serialize(views, None).expect("serialize")
}

/// Version 1: three tensors, header on page 0, data over many pages.
pub(super) fn safetensors_v1() -> Vec<u8> {
    use safetensors::Dtype::*;
    safetensors_file(
        &[
            ("embed", F32, &[256, 256]),
            ("bias", I64, &[4096]),
            ("mask", U8, &[3 * 4096 + 17]),
        ],
        1,
    )
}

/// Version 2: other tensors, another layout, larger than version 1 (so the
/// control's pages never fall past the end: it must fail on bytes, not on
/// SIGBUS).
pub(super) fn safetensors_v2() -> Vec<u8> {
    use safetensors::Dtype::*;
    safetensors_file(
        &[
            ("mask", U8, &[1000]),
            ("proj", F64, &[160, 256]),
            ("embed", F32, &[64]),
            ("extra", I32, &[20_000]),
        ],
        99,
    )
}

/// Deserializes `bytes`, or says why it cannot.
pub(super) fn tensors_of(bytes: &[u8]) -> Result<Tensors, String> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let mut out: Tensors = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            (
                name,
                format!("{:?}", t.dtype()),
                t.shape().to_vec(),
                t.data().to_vec(),
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

/// How a mapping of a safetensors file fared when another process rewrote
/// the file after the header page was read and before any tensor page was.
pub(super) enum Fared {
    /// The map call refused (`Unsupported`), with the message.
    Refused(String),
    /// Deserialized to exactly the version-1 tensors.
    V1,
    /// Anything else: the mixture (or error) seen.
    Mixed(String),
}

pub(super) fn safetensors_run(
    b: Backend,
    dir: &Path,
    c: Consistency,
    open_before: bool,
) -> Result<Fared, Failed> {
    let v1 = safetensors_v1();
    let v2 = safetensors_v2();
    let want = tensors_of(&v1).map_err(|e| Failed::from(format!("v1 does not parse: {e}")))?;
    let tmp = tempfile::Builder::new()
        .prefix("mapcopy-pit-")
        .tempdir_in(dir)
        .map_err(io("temp dir"))?;
    let path = tmp.path().join("model.safetensors");
    let next = tmp.path().join("v2.safetensors");
    std::fs::write(&path, &v1).map_err(io("writing v1"))?;
    std::fs::write(&next, &v2).map_err(io("writing v2"))?;
    let writer = Rewriter::spawn(&path, &next, open_before).map_err(Failed::from)?;
    let file = File::open(&path).map_err(io("open"))?;
    let mapped = match b {
        Backend::Copy(s) => match MapOptions::new().strategy(s).consistency(c).map(&file) {
            Ok(m) => Mapped::Copy(m),
            Err(e) if e.kind() == ErrorKind::Unsupported => {
                return Ok(Fared::Refused(e.to_string()));
            }
            Err(e) => return fail(format!("map: {e}")),
        },
        Backend::Control => Mapped::Control(Control::new(&file, 0, v1.len()).map_err(io("mmap"))?),
    };
    let src = mapped.source();
    // Read the header (page 0) only, as a reader of the format does first.
    let mut head = vec![0u8; page().min(v1.len())];
    src.read(0, &mut head).map_err(Failed::from)?;
    writer.rewrite().map_err(Failed::from)?;
    let mut all = vec![0u8; src.len()];
    src.read(0, &mut all).map_err(Failed::from)?;
    Ok(match tensors_of(&all) {
        Ok(got) if got == want => Fared::V1,
        Ok(got) => {
            let intact = got.iter().filter(|t| want.contains(t)).count();
            Fared::Mixed(format!(
                "{intact} of {} version-1 tensors intact",
                want.len()
            ))
        }
        Err(e) => Fared::Mixed(format!("does not deserialize: {e}")),
    })
}

/// `point-in-time/safetensors/*` and `per-page/safetensors/*`: a writer that
/// holds the file open before the map (`open_before`) or opens it after,
/// and rewrites it with other tensors and another layout after the header
/// page was read and before any tensor page was. A strategy that keeps `c`
/// = point-in-time yields the version-1 tensors exactly or refuses (Lazy
/// always; Guard and Lease when a writer holds the file open, as
/// documented). Lazy under per-page and the control show the mixture.
pub(super) fn safetensors_case(
    b: Backend,
    dir: &Path,
    c: Consistency,
    open_before: bool,
) -> Outcome {
    if let Backend::Copy(s) = b
        && let Err(why) = usable_in(s, dir)
    {
        return skip(format!("{s} is not usable here: {why}"));
    }
    let fared = safetensors_run(b, dir, c, open_before)?;
    let keeps = match b {
        Backend::Copy(s) => s.keeps(c) && c == Consistency::PointInTime,
        Backend::Control => false,
    };
    match (b, fared) {
        (_, Fared::V1) if keeps => Ok(Completion::Completed),
        (Backend::Copy(s), Fared::Refused(why)) => {
            let documented =
                !s.keeps(c) || (open_before && matches!(s, Strategy::Guard | Strategy::Lease));
            if documented {
                Ok(Completion::Completed)
            } else {
                fail(format!(
                    "{s} refused under {c} (writer open before: {open_before}): {why}"
                ))
            }
        }
        (_, Fared::Mixed(what)) if keeps => fail(format!(
            "{} claims {c} but mixed versions: {what}",
            b.name()
        )),
        // Per-page (Lazy) and the control: the header page is version 1,
        // the tensor pages version 2 — the mixture must show.
        (_, Fared::Mixed(_)) => Ok(Completion::Completed),
        (_, Fared::V1) => fail(format!(
            "{} under {c} read the version-1 tensors although the tensor pages were first touched after the rewrite: the case did not exercise mixing",
            b.name()
        )),
        (Backend::Control, Fared::Refused(_)) => unreachable!("the control never refuses"),
    }
}
