//! The cache keys of `quad select`'s stages, in one place. Each is [`key_of`] a JSON array naming
//! the stage and everything its artifact depends on: the key of the stage it reads from, the
//! settings that change it (as serialised: a renamed field or spelling would orphan every cached
//! entry, which `the_keys_of_the_default_configuration_are_pinned` guards), and the algorithm's
//! version where one is named.

use serde_json::{json, Value};

use super::config::ValidSelectConfig;
use crate::hash::key_of;

/// The pool as read: its files' bytes and the fields that make documents of them.
pub fn corpus(cfg: &ValidSelectConfig, pool_sha: &str) -> String {
    key_of(&json!([pool_sha, cfg.raw.text_field, cfg.raw.id_field]))
}

/// The pool's embeddings (`embedder`: the model's fingerprint, or the hashing dimension); the
/// cached matrix holds rows already scaled to unit norm ("unit-rows").
pub fn embed(corpus_key: &str, embedder: Value) -> String {
    key_of(&json!(["embed", corpus_key, embedder, "unit-rows"]))
}

/// The clustering of those embeddings.
pub fn cluster(cfg: &ValidSelectConfig, embed_key: &str) -> String {
    key_of(&json!(["cluster", embed_key, cfg.raw.cluster, crate::cluster::ALGORITHM]))
}

/// The proxy trained on the pool.
pub fn proxy(cfg: &ValidSelectConfig, corpus_key: &str) -> String {
    key_of(&json!(["proxy", corpus_key, cfg.raw.proxy.train]))
}

/// `parts` with `[influence] batch` appended when it is not the default: documents per pass
/// change the padding and so the last bits of factors, gradients and scores (a cache warmed at
/// another batch must not answer for this one). Left out at the default, so keys made before it
/// was named stay valid.
fn with_batch(cfg: &ValidSelectConfig, mut parts: Value) -> Value {
    if cfg.raw.influence.batch != crate::influence::DEFAULT_BATCH {
        parts.as_array_mut().expect("an array").push(json!({ "batch": cfg.raw.influence.batch }));
    }
    parts
}

/// The factors fitted with the proxy on the pool.
pub fn factors(cfg: &ValidSelectConfig, proxy_sha: &str, corpus_key: &str) -> String {
    key_of(&with_batch(cfg, json!(["factors", proxy_sha, corpus_key, cfg.raw.factors])))
}

/// The reference gradient: the proxy, the reference's bytes and the field its text is read from,
/// the layers and windows. The field enters the key only when it is not the default one, as the
/// default estimator stays out of the parameters: keys made before it was named stay valid.
pub fn reference_gradient(cfg: &ValidSelectConfig, proxy_sha: &str, ref_sha: &str) -> String {
    let raw = &cfg.raw;
    let mut parts = json!(["refgrad", proxy_sha, ref_sha, cfg.factors.layers, raw.factors.context, raw.influence.max_tokens]);
    if cfg.reference.text_field != crate::corpus::CorpusConfig::default().text_field {
        parts.as_array_mut().expect("an array").push(json!({ "text_field": cfg.reference.text_field }));
    }
    key_of(&with_batch(cfg, parts))
}

/// The documents' scores against that reference through those factors.
pub fn scores(cfg: &ValidSelectConfig, ref_key: &str, factors_key: &str) -> String {
    let i = &cfg.raw.influence;
    key_of(&with_batch(cfg, json!(["scores", ref_key, factors_key, i.strategy, i.damping_rel, i.max_tokens])))
}

/// A signal policy's values: the signal, its settings, the pool as read and tokenized (the
/// eligible documents: the proxy's tokenizer) and the reference. Stands in for the score key in
/// [`run`] (signal policies score nothing).
pub fn signal(cfg: &ValidSelectConfig, signal: crate::signals::Signal, (corpus_key, proxy_sha, ref_sha): (&str, &str, &str)) -> String {
    let mut parts = json!(["signal", signal, cfg.raw.signals, corpus_key, proxy_sha]);
    // Perplexity reads the pool and the proxy only; a new reference must not invalidate it.
    if signal != crate::signals::Signal::Perplexity {
        parts.as_array_mut().expect("an array").push(json!([ref_sha, cfg.reference.text_field]));
    }
    key_of(&parts)
}

/// The proxy's mean token loss of each document (`losses-KEY.jsonl`, by document id): the proxy,
/// the tokens read ([`crate::influence::encode_for_scoring`] with `max_tokens`) and the window.
pub fn losses(cfg: &ValidSelectConfig, proxy_sha: &str) -> String {
    key_of(&with_batch(cfg, json!(["losses", proxy_sha, cfg.raw.influence.max_tokens, cfg.raw.factors.context])))
}

/// A bandit run: the clustering, the proxy, the scores, the bandit's settings, the budget and the
/// documents too short to score.
pub fn run(
    cfg: &ValidSelectConfig,
    (cluster_key, proxy_sha, score_key): (&str, &str, &str),
    budget: impl serde::Serialize,
    too_short: usize,
) -> String {
    key_of(&json!(["run", cluster_key, proxy_sha, score_key, cfg.raw.bandit, budget, too_short]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::SelectConfig;

    /// Keys of every stage for fixed inputs at the default configuration: a change here means
    /// every user's cache is computed again, so it must be deliberate (re-pin and say so).
    #[test]
    fn the_keys_of_the_default_configuration_are_pinned() {
        let cfg = SelectConfig::default().check().unwrap();
        let corpus_key = corpus(&cfg, "pool");
        let embed_key = embed(&corpus_key, json!(["hashing", 2048]));
        let factors_key = factors(&cfg, "proxy", &corpus_key);
        let ref_key = reference_gradient(&cfg, "proxy", "ref");
        let score_key = scores(&cfg, &ref_key, &factors_key);
        let keys = [
            corpus_key.clone(),
            embed_key.clone(),
            cluster(&cfg, &embed_key),
            proxy(&cfg, &corpus_key),
            factors_key,
            ref_key,
            score_key.clone(),
            run(&cfg, ("c", "proxy", &score_key), crate::bandit::Budget::Tokens(400_000), 0),
        ];
        assert_eq!(keys, PINNED, "{keys:?}");
    }

    /// The reference gradient of other texts is another entry: with a given `--model` (the proxy
    /// unchanged), a reference read from another field must not reuse the gradient.
    #[test]
    fn the_reference_text_field_is_in_the_gradient_key() {
        let key = |field: Option<&str>| {
            let mut c = SelectConfig::default();
            c.reference_text_field = field.map(str::to_string);
            reference_gradient(&c.check().unwrap(), "proxy", "ref")
        };
        assert_eq!(key(None), key(Some("text")));
        assert_ne!(key(None), key(Some("content")));
        let mut pool_field = SelectConfig::default();
        pool_field.text_field = "content".into();
        assert_eq!(reference_gradient(&pool_field.check().unwrap(), "proxy", "ref"), key(Some("content")));
    }

    /// Another `[influence] batch` gives other bits (padding), so other entries from the factors on.
    #[test]
    fn the_batch_is_in_the_factor_gradient_and_score_keys() {
        let keys = |batch: usize| {
            let mut c = SelectConfig::default();
            c.influence.batch = batch;
            let cfg = c.check().unwrap();
            let f = factors(&cfg, "proxy", "corpus");
            let r = reference_gradient(&cfg, "proxy", "ref");
            let s = scores(&cfg, &r, &f);
            [f, r, s]
        };
        let (a, b) = (keys(crate::influence::DEFAULT_BATCH), keys(crate::influence::DEFAULT_BATCH + 3));
        for i in 0..3 {
            assert_ne!(a[i], b[i], "key {i}");
        }
    }

    const PINNED: [&str; 8] = [
        "1d11d59c2a07576b",
        "70773c9a94d74709",
        "d2ae4fafc57a0563",
        "cc8784a5de0472bc",
        "ae005dd7fc6c715e",
        "07de1cb998a5c2ea",
        "b96f7fdea7c43ad9",
        "8e5956546e9dba4e",
    ];
}
