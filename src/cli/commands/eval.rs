//! `quad eval split` and `quad eval run`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use crate::corpus::{CorpusConfig, CorpusReader, Document};
use crate::eval;
use crate::select::ManifestSummary;

use crate::cli::args::EvalCommand;

pub fn run(cmd: EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::Split {
            corpus,
            label_field,
            heldout_per_domain,
            vocab_size,
            seed,
            out,
        } => {
            let mut reader = corpus.open()?;
            let docs: Vec<_> = reader.by_ref().collect::<Result<_, _>>()?;
            eprintln!("{}", reader.report());
            let (pool, held) = eval::write_split(&docs, &label_field, heldout_per_domain, seed, vocab_size, &out)?;
            println!(
                "held out {held} documents ({heldout_per_domain} per '{label_field}' value), {pool} left for selection -> {}",
                out.display()
            );
            Ok(())
        }
        EvalCommand::Run {
            selection,
            reference,
            split,
            label_field,
            k,
            seed,
            steps,
            quick,
            out,
        } => {
            if reference.len() != out.len() {
                bail!("{} --reference for {} --out: give one output per reference", reference.len(), out.len());
            }
            // One result a file: a second --out of the same file would overwrite the first.
            if let Some(dup) = duplicate(&out) {
                bail!("--out {} is given twice: give each reference its own output", dup.display());
            }
            if let Some(dup) = duplicate(&reference) {
                bail!("--reference {} is given twice", dup.display());
            }
            let sel = read(&selection)?;
            // Training on the held-out documents makes the held-out loss meaningless.
            let held_ids: std::collections::HashSet<String> =
                read(&split.join(eval::SPLIT_HELDOUT))?.into_iter().map(|d| d.id).collect();
            let overlap = sel.iter().filter(|d| held_ids.contains(&d.id)).count();
            if overlap > 0 {
                let first = &sel.iter().find(|d| held_ids.contains(&d.id)).expect("counted").id;
                bail!(
                    "{}: {overlap} selected documents (the first: {first}) are in the held-out set of {}: select from the split's pool, not from the held-out documents",
                    selection.display(),
                    split.display()
                );
            }
            let refs: Vec<Vec<String>> = reference
                .iter()
                .map(|r| Ok(read(r)?.into_iter().map(|d| d.text).collect()))
                .collect::<Result<_>>()?;
            let heldout: Vec<(String, String)> = read(&split.join(eval::SPLIT_HELDOUT))?
                .into_iter()
                .map(|d| (d.field(&label_field).unwrap_or_else(|| "(none)".into()), d.text))
                .collect();
            let tokenizer = eval_tokenizer(&split)?;
            let mut params = if quick { eval::eval_params_quick() } else { eval::eval_params() };
            if let Some(s) = steps {
                params.steps = s;
            }
            let texts: Vec<String> = sel.iter().map(|d| d.text.clone()).collect();
            let ref_slices: Vec<&[String]> = refs.iter().map(Vec::as_slice).collect();
            let results = eval::evaluate_many(&texts, &tokenizer, &ref_slices, &heldout, &params, seed)?;
            let k = match k {
                Some(k) => k,
                None => manifest_k(&selection)?,
            };
            let records: Vec<serde_json::Value> = sel
                .iter()
                .map(|d| serde_json::from_str(&d.record))
                .collect::<Result<_, _>>()?;
            let stats = eval::selection_stats(&records, k, &label_field)
                .map_err(|e| anyhow::anyhow!("{}: {e}", selection.display()))?;
            for ((result, out), reference) in results.iter().zip(&out).zip(&reference) {
                println!(
                    "{}: reference loss {:.4}, held-out mean {:.4} ({} domains), cluster entropy {:.3}, {} clusters, {:.0} s",
                    reference.display(),
                    result.reference_loss,
                    result.heldout_mean,
                    result.heldout_loss.len(),
                    stats.cluster_entropy,
                    stats.clusters_touched,
                    result.seconds
                );
                eval::write_result(out, result, &stats, seed, &selection)?;
            }
            Ok(())
        }
    }
}

/// The first path given twice (the same file, however it is spelled, when it exists).
fn duplicate(paths: &[std::path::PathBuf]) -> Option<&std::path::PathBuf> {
    let key = |p: &Path| crate::path_io::resolve(p);
    let mut seen = std::collections::HashSet::new();
    paths.iter().find(|p| !seen.insert(key(p)))
}

/// The k recorded in the manifest beside a selection.
fn manifest_k(selection: &Path) -> Result<usize> {
    let m = selection.with_file_name("manifest.json");
    ManifestSummary::read(&m)
        .with_context(|| format!("give --k when the selection has no manifest ({})", m.display()))?
        .k()
        .with_context(|| format!("{}: no k recorded; give --k", m.display()))
}

/// The evaluation tokenizer `quad eval split` trained.
fn eval_tokenizer(split: &Path) -> Result<tokenizers::Tokenizer> {
    let tok_path = split.join(eval::SPLIT_TOKENIZER);
    tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| anyhow::anyhow!("{}: {e}", tok_path.display()))
}

fn read(p: &Path) -> Result<Vec<Document>> {
    Ok(CorpusReader::read_all(p, CorpusConfig::default())
        .with_context(|| format!("reading {}", p.display()))?
        .0)
}
