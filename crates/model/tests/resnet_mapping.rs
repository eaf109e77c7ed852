//! ResNet loading, checked without real torchvision weights (none can be had here): narrow
//! ResNet-18 and ResNet-50 state dicts in torchvision's key names, written as real torch.save
//! files by `fixtures/make_resnet_fixtures.py`, must load with every tensor applied and none
//! missing, and give the logits the script computed independently with numpy.

use std::path::PathBuf;

use burn::prelude::*;
use model::Backbone;
use model::resnet::ResNet;
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn check(depth: usize) {
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("resnet_reference.json")).unwrap(),
    )
    .unwrap();
    let device = Device::flex();
    let mut backbone = Backbone::ResNet(ResNet::new(depth, 4, 10, &device));
    let result = backbone
        .load_pytorch(&fixtures().join(format!("resnet{depth}_w4.pth")))
        .unwrap();
    let expected = &reference[format!("resnet{depth}")];
    let total = expected["tensors"].as_u64().unwrap() as usize;
    assert!(result.missing.is_empty(), "missing: {:?}", result.missing);
    assert!(result.errors.is_empty());
    // Everything but the num_batches_tracked counters (which Burn does not keep) is applied.
    assert!(
        result
            .unused
            .iter()
            .all(|k| k.ends_with("num_batches_tracked")),
        "unused: {:?}",
        result.unused
    );
    assert_eq!(result.applied.len() + result.unused.len(), total);

    let shape: Vec<usize> = reference["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let n: usize = shape.iter().product();
    let input: Vec<f32> = (0..n).map(|i| (0.37 * i as f64).sin() as f32).collect();
    let x = Tensor::<4>::from_data(
        TensorData::new(input, [shape[0], shape[1], shape[2], shape[3]]),
        &device,
    );
    let backbone = backbone.valid();
    let folded: Vec<f32> = backbone
        .clone()
        .fold_batch_norm()
        .logits(x.clone())
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let logits: Vec<f32> = backbone.logits(x).into_data().try_to_vec::<f32>().unwrap();
    let want: Vec<f64> = expected["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    assert_eq!(logits.len(), want.len());
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    for ((got, folded), want) in logits.iter().zip(&folded).zip(&want) {
        assert!(
            (*got as f64 - want).abs() <= 1e-3 * scale.max(1.0),
            "resnet{depth}: {got} vs {want}"
        );
        // Batch norms folded into the convolutions give the same logits.
        assert!(
            ((got - folded) as f64).abs() <= 1e-4 * scale.max(1.0),
            "resnet{depth} folded: {folded} vs {got}"
        );
    }
}

#[test]
fn resnet18_loads_torchvision_layout() {
    check(18);
}

#[test]
fn resnet50_loads_torchvision_layout() {
    check(50);
}
