"""Aegle's models: architectures, weights registry, intensity normalisation, triage, synthesis, training, metrics.

The public API is :data:`_EXPORTS` (name → defining module; ``__all__``); other packages import only these names
(``from gan import load_model``). They load lazily (PEP 562): ``import gan`` imports nothing else, and torch only
when a torch-backed name is first used.

* Serving names come from modules that import no training code; the inference service uses only those.
* Training names come from :mod:`gan.train` (never imported by serving, nor are :mod:`gan.losses`,
  :mod:`gan.degrade` and :mod:`gan.lesions`). ``train_classifier`` and ``train_hybrid`` are functions here and
  also the commands ``python -m gan.train_classifier`` / ``python -m gan.train_hybrid``, which are not importable.

Apart from those two, no exported name is a submodule's name: a submodule, once imported, would hide it.
"""

from __future__ import annotations

from core import lazy_exports

#: Public name → the module that defines it.
_EXPORTS: dict[str, str] = {
    # Serving (the inference service; these modules import no training code)
    "CARD_FILE": "gan.registry", "DEFAULT_ROOT": "gan.registry", "WEIGHTS_FILE": "gan.registry",
    "ModelCard": "gan.registry", "RegistryError": "gan.registry", "WeightsIntegrityError": "gan.registry",
    "list_models": "gan.registry", "load_card": "gan.registry", "load_model": "gan.registry",
    "save_model": "gan.registry", "sha256_file": "gan.registry", "update_card": "gan.registry",
    "verified_card": "gan.registry",
    "ParityError": "gan.export", "TensorRTUnavailable": "gan.export", "choose_backend": "gan.export",
    "compile_tensorrt": "gan.export", "export_onnx": "gan.export", "parity": "gan.export",
    "tensorrt_unavailable_reason": "gan.export", "architecture_fingerprint": "gan.export",
    "build": "gan.models",
    "TRUNKS": "gan.models.enhancer", "ContextEnhancer": "gan.models.enhancer", "MultiScaleBlock": "gan.models.enhancer",
    "PARAMETER_BUDGET": "gan.models.hybrid", "QualityCriteria": "gan.models.hybrid",
    "SyntheticBatch": "gan.models.hybrid", "generator_path_parameters": "gan.models.hybrid",
    "bicubic": "gan.resampling",
    "NORMALISATION": "gan.intensity", "SOFT_TISSUE_WINDOW": "gan.intensity", "IntensityMap": "gan.intensity",
    "intensity_map": "gan.intensity", "normalise_volume": "gan.intensity",
    "INPUT_SIDE": "gan.triage", "TRIAGE_CLASSES": "gan.triage", "TriageResult": "gan.triage",
    "card_input": "gan.triage", "card_thresholds": "gan.triage", "center_window": "gan.triage",
    "classify": "gan.triage", "enhance_score": "gan.triage", "interpret": "gan.triage", "load_triage": "gan.triage",
    "preprocess": "gan.triage",
    "STAGES": "gan.synthesis", "generate": "gan.synthesis", "load_generators": "gan.synthesis",
    "DEFAULT_DATASETS": "gan.data", "HELD_OUT_TEST_SUBJECTS": "gan.data", "Volume": "gan.data",
    "held_out_test": "gan.data", "load_dataset": "gan.data",
    "load_pyradiomics": "gan.data", "lossy_syntaxes": "gan.data", "PYRADIOMICS_ARCHIVE": "gan.data",
    "read_nrrd": "gan.data",
    # Evaluation (benchmarks, training)
    "checkerboard_ratio": "gan.metrics", "mean_gradient": "gan.metrics", "noise_sigma": "gan.metrics",
    "psnr": "gan.metrics", "spatial_frequency": "gan.metrics", "ssim": "gan.metrics", "tissue_mask": "gan.metrics",
    "BINARY_METRICS": "gan.classification_metrics", "bootstrap_ci": "gan.classification_metrics",
    "roc_auc": "gan.classification_metrics",
    "fid_and_is": "gan.fid",
    "LesionPatches": "gan.lesions", "lesion_patches": "gan.lesions",
    # Training (aegle train, benchmarks; never serving)
    "TRAINERS": "gan.train", "run_trainer": "gan.train",
    "BLUR_GROUPS": "gan.train.data", "PATCH_MARGIN": "gan.train.data", "PairBatch": "gan.train.data",
    "PreparedSlice": "gan.train.data", "VITAL_RANGES": "gan.train.data", "blur_px": "gan.train.data",
    "make_pairs": "gan.train.data", "prepare_slices": "gan.train.data", "sample_context": "gan.train.data",
    "training_splits": "gan.train.data",
    "TrainConfig": "gan.train.enhancer", "TrainResult": "gan.train.enhancer", "train_enhancer": "gan.train.enhancer",
    "ClassifierConfig": "gan.train.classifier", "ClassifierResult": "gan.train.classifier",
    "calibrate_triage": "gan.train.classifier", "train_classifier": "gan.train.classifier",
    "lesion_data": "gan.train.classifier_data", "triage_data": "gan.train.classifier_data",
    "triage_test_windows": "gan.train.classifier_data",
    "choose_thresholds": "gan.train.evaluation", "evaluate_lesion": "gan.train.evaluation",
    "evaluate_triage": "gan.train.evaluation", "flat_metrics": "gan.train.evaluation",
    "predict": "gan.train.evaluation",
    "HybridConfig": "gan.train.hybrid", "train_hybrid": "gan.train.hybrid",
}
#: Public names whose attribute in their module is named otherwise.
_ATTRIBUTES: dict[str, str] = {"load_dataset": "load"}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _ATTRIBUTES)
