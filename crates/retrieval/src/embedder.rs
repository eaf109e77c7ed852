//! What `--model` loads: an [`Embedder`], one or more members (networks or descriptors) as
//! one. Each member's unit-length embedding is scaled by the square root of its weight,
//! concatenated, and the whole scaled back to unit length. The squared Euclidean
//! distance between two such embeddings is then the weighted mean of the members' squared
//! distances, so a member of weight 2 counts twice as much as one of weight 1.
//!
//! Written as members joined by `:`, each with an optional `@weight`:
//! `efficientnet_lite1:checkpoints/arcface@2` (an ensemble). A single model is an embedder of one
//! member, and its embeddings are exactly the model's own.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::prelude::Device;
use data::DecodeError;

use crate::embed::{EmbedOptions, EmbeddingSet, Member};

/// One member as written: the model (a backbone, descriptor or checkpoint) and its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberSpec {
    pub model: String,
    pub weight: f32,
}

/// Parses `a:b@2:c`.
pub fn parse_members(spec: &str) -> Result<Vec<MemberSpec>> {
    let mut members = Vec::new();
    for part in spec.split(':') {
        let (model, weight) = match part.rsplit_once('@') {
            Some((m, w)) => (
                m,
                w.parse::<f32>()
                    .ok()
                    .filter(|w| w.is_finite() && *w > 0.0)
                    .with_context(|| {
                        format!("model {spec:?}: weight {w:?} is not a positive number")
                    })?,
            ),
            None => (part, 1.0),
        };
        if model.is_empty() {
            bail!("model {spec:?}: empty member (members are joined by ':')");
        }
        members.push(MemberSpec {
            model: model.to_string(),
            weight,
        });
    }
    Ok(members)
}

/// Loaded members, each with its weight, on one device.
pub struct Embedder {
    pub members: Vec<(Member, f32)>,
    pub device: Device,
}

impl Embedder {
    /// Loads `--model`: members joined by `:`, each with an optional `@weight`.
    pub fn load(spec: &str, device: &Device) -> Result<Self> {
        let members = parse_members(spec)?
            .into_iter()
            .map(|m| {
                Member::load(&m.model, device)
                    .with_context(|| format!("loading {}", m.model))
                    .map(|e| (e, m.weight))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            members,
            device: device.clone(),
        })
    }

    /// The members' ids (with weights other than 1), joined like the spec.
    pub fn id(&self) -> String {
        self.members
            .iter()
            .map(|(m, w)| {
                if *w == 1.0 {
                    m.id().to_string()
                } else {
                    format!("{}@{w}", m.id())
                }
            })
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Embeds a folder with every member and joins the embeddings. An image any member could
    /// not read is left out (all members decode the same way, so they fail together).
    pub fn embed_folder(
        &self,
        dir: &Path,
        labels: Option<&Path>,
        options: &EmbedOptions,
    ) -> Result<(EmbeddingSet, Vec<DecodeError>)> {
        let (_, entries) = data::list_images(dir, labels)?;
        self.embed_entries(entries, options)
            .with_context(|| format!("embedding {}", dir.display()))
    }

    /// Embeds a list of images with every member and joins the embeddings.
    pub fn embed_entries(
        &self,
        entries: Vec<data::ImageEntry>,
        options: &EmbedOptions,
    ) -> Result<(EmbeddingSet, Vec<DecodeError>)> {
        let mut sets = Vec::new();
        let mut skipped = Vec::new();
        for (i, (member, _)) in self.members.iter().enumerate() {
            let (set, errors) = member.embed_entries(entries.clone(), options)?;
            if i == 0 {
                skipped = errors;
            }
            sets.push(set);
        }
        Ok((join(&sets, &self.weights())?, skipped))
    }

    /// The members' weights, in order.
    fn weights(&self) -> Vec<f32> {
        self.members.iter().map(|(_, w)| *w).collect()
    }

    /// The joined embedding's width.
    pub fn embedding_dim(&self) -> usize {
        self.members.iter().map(|(m, _)| m.embedding_dim()).sum()
    }

    /// Embeds decoded images (row `i` for `images[i]`, joined across members).
    pub fn embed_images(&self, images: &[image::RgbImage], options: &EmbedOptions) -> Vec<f32> {
        let sets: Vec<EmbeddingSet> = self
            .members
            .iter()
            .map(|(member, _)| {
                let dim = member.embedding_dim();
                let values = member.embed_images(images, options);
                let rows: Vec<&[f32]> = values.chunks_exact(dim).collect();
                EmbeddingSet::from_rows(&rows)
            })
            .collect();
        join(&sets, &self.weights())
            .expect("members embed the same images")
            .values
    }
}

/// Concatenates the members' embedding sets of the same images, member `i` scaled by
/// `sqrt(weights[i] / Σ weights)`, so unit-length members give a unit-length result.
pub fn join(sets: &[EmbeddingSet], weights: &[f32]) -> Result<EmbeddingSet> {
    let [first, rest @ ..] = sets else {
        bail!("an ensemble needs at least one member");
    };
    if rest.is_empty() {
        return Ok(first.clone());
    }
    for s in rest {
        if s.entries.len() != first.entries.len()
            || s.entries
                .iter()
                .zip(&first.entries)
                .any(|(a, b)| a.name != b.name)
        {
            bail!("ensemble members read different images (a file failed for one member only)");
        }
    }
    let total: f32 = weights.iter().sum();
    let scales: Vec<f32> = weights.iter().map(|w| (w / total).sqrt()).collect();
    let dim: usize = sets.iter().map(|s| s.dim).sum();
    let mut values = Vec::with_capacity(first.len() * dim);
    for row in 0..first.len() {
        for (set, scale) in sets.iter().zip(&scales) {
            values.extend(set.row(row).iter().map(|v| v * scale));
        }
    }
    Ok(EmbeddingSet {
        entries: first.entries.clone(),
        dim,
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(rows: &[[f32; 2]]) -> EmbeddingSet {
        EmbeddingSet::from_rows(rows)
    }

    #[test]
    fn parses_members_and_weights() {
        let m = parse_members("efficientnet_lite1:checkpoints/arcface@2.5").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].model.as_str(), m[0].weight),
            ("efficientnet_lite1", 1.0)
        );
        assert_eq!(
            (m[1].model.as_str(), m[1].weight),
            ("checkpoints/arcface", 2.5)
        );
        assert!(parse_members("a@0").is_err());
        assert!(parse_members("a@x").is_err());
        assert!(parse_members("a::b").is_err());
    }

    #[test]
    fn joined_distance_is_the_weighted_mean_of_member_distances() {
        let a = set(&[[1.0, 0.0], [0.0, 1.0]]);
        let b = set(&[[0.6, 0.8], [0.6, 0.8]]);
        let joined = join(&[a.clone(), b.clone()], &[3.0, 1.0]).unwrap();
        assert_eq!(joined.dim, 4);
        let norm: f32 = joined.row(0).iter().map(|v| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-6);
        let d = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| (p - q).powi(2)).sum::<f32>();
        let expected = (3.0 * d(a.row(0), a.row(1)) + d(b.row(0), b.row(1))) / 4.0;
        assert!((d(joined.row(0), joined.row(1)) - expected).abs() < 1e-6);
        // One member: unchanged.
        assert_eq!(
            join(std::slice::from_ref(&a), &[5.0]).unwrap().values,
            a.values
        );
    }
}
