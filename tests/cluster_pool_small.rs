//! `quad embed` + `quad cluster --label-field domain` on pool-small (11 domains), against the
//! scikit-learn golden numbers in `../shared/golden/minilm-pool-small.json`.

mod common;

use std::path::Path;

fn check_outputs(dir: &Path, n_docs: usize, k: usize) {
    let assignments = std::fs::read_to_string(dir.join("assignments.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = assignments
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), n_docs);
    for r in &rows {
        assert!(r["id"].is_string());
        assert!(r["cluster"].as_u64().unwrap() < k as u64);
        assert!(r["distance"].as_f64().unwrap() >= 0.0);
    }
    let clusters = common::read_json(&dir.join("clusters.json"));
    let sizes: Vec<u64> = clusters["sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    assert_eq!(sizes.len(), k);
    assert_eq!(sizes.iter().sum::<u64>(), n_docs as u64);
    let d = clusters["centroid_cosine_distances"].as_array().unwrap();
    assert_eq!(d.len(), k);
    let tau = clusters["tau"].as_f64().unwrap();
    for (i, row) in d.iter().enumerate() {
        let row = row.as_array().unwrap();
        assert_eq!(row.len(), k);
        assert_eq!(row[i].as_f64().unwrap(), 0.0);
        for (j, v) in row.iter().enumerate() {
            let dij = v.as_f64().unwrap();
            assert!((dij - d[j][i].as_f64().unwrap()).abs() < 1e-5, "symmetric");
            let listed = clusters["neighbours"][i]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["cluster"].as_u64() == Some(j as u64));
            assert_eq!(listed, i != j && dij < tau, "neighbour {i}-{j} at {dij}");
        }
    }
}

#[test]
fn minilm_clusters_track_domains_like_scikit_learn() {
    let shared = common::shared();
    let golden = common::read_json(&shared.join("golden/minilm-pool-small.json"));
    let g22 = &golden["minilm"]["22"];
    let pool = shared.join("data/pool-small.jsonl");
    let minilm = common::minilm();
    let tmp = tempfile::tempdir().unwrap();
    let emb = tmp.path().join("emb");
    let out = common::quad(&[
        "embed",
        "--input",
        pool.to_str().unwrap(),
        "--model",
        minilm.to_str().unwrap(),
        "--out",
        emb.to_str().unwrap(),
    ]);
    eprintln!("{out}");
    let cl = tmp.path().join("clusters");
    let out = common::quad(&[
        "cluster",
        "--input",
        pool.to_str().unwrap(),
        "--embeddings",
        emb.to_str().unwrap(),
        "--k",
        "22",
        "--label-field",
        "domain",
        "--out",
        cl.to_str().unwrap(),
    ]);
    eprintln!("{out}");
    let (nmi, ari, purity, inertia) = (
        common::metric(&out, "NMI"),
        common::metric(&out, "ARI"),
        common::metric(&out, "purity"),
        common::metric(&out, "inertia"),
    );
    let (g_nmi, g_purity, g_inertia) = (
        g22["nmi"].as_f64().unwrap(),
        g22["purity"].as_f64().unwrap(),
        g22["inertia"].as_f64().unwrap(),
    );
    eprintln!(
        "MiniLM k=22: NMI {nmi:.4} (sklearn {g_nmi:.4}), ARI {ari:.4}, purity {purity:.4} \
         (sklearn {g_purity:.4}), inertia {inertia:.1} (sklearn {g_inertia:.1})"
    );
    assert!(nmi >= 0.57, "NMI {nmi}");
    assert!((nmi - g_nmi).abs() <= 0.05, "NMI {nmi} vs {g_nmi}");
    assert!((purity - g_purity).abs() <= 0.05, "purity {purity} vs {g_purity}");
    // Same objective on the same vectors: within 1% of scikit-learn's best of 3 inits.
    assert!(inertia <= g_inertia * 1.01, "inertia {inertia} vs {g_inertia}");
    check_outputs(&cl, 1173, 22);
}

#[test]
fn hashing_embedder_clusters_track_domains() {
    let pool = common::shared().join("data/pool-small.jsonl");
    let tmp = tempfile::tempdir().unwrap();
    let out = common::quad(&[
        "cluster",
        "--input",
        pool.to_str().unwrap(),
        "--k",
        "22",
        "--label-field",
        "domain",
        "--out",
        tmp.path().to_str().unwrap(),
    ]);
    eprintln!("{out}");
    let nmi = common::metric(&out, "NMI");
    assert!(nmi >= 0.45, "hashing NMI {nmi}");
    check_outputs(tmp.path(), 1173, 22);
}

#[test]
fn mini_batch_mode_gives_a_comparable_clustering() {
    let pool = common::shared().join("data/pool-small.jsonl");
    let tmp = tempfile::tempdir().unwrap();
    let out = common::quad(&[
        "cluster",
        "--input",
        pool.to_str().unwrap(),
        "--k",
        "11",
        "--mini-batch",
        "256",
        "--label-field",
        "domain",
        "--out",
        tmp.path().to_str().unwrap(),
    ]);
    eprintln!("{out}");
    assert!(common::metric(&out, "NMI") >= 0.40);
    check_outputs(tmp.path(), 1173, 11);
}

#[test]
fn k_larger_than_corpus_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = common::repo().join("tests/fixtures/bad-lines.jsonl");
    let stderr = common::quad_fails(&[
        "cluster",
        "--input",
        fixture.to_str().unwrap(),
        "--k",
        "5",
        "--out",
        tmp.path().to_str().unwrap(),
    ]);
    assert!(stderr.contains("k = 5 is larger than the number of documents (4)"), "{stderr}");
    // The skipped lines were reported before the error.
    assert!(stderr.contains("skipped 11"), "{stderr}");
}
