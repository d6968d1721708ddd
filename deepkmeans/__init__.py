"""deepkmeans: compress neural networks by k-means weight sharing of filter rows, with Deep k-Means re-training.

    from deepkmeans import CompressConfig, DeepKMeans, LayerSpec, RegularizerConfig, load, save

    dkm = DeepKMeans(model, CompressConfig(layers={"conv*": LayerSpec(K=16)}), RegularizerConfig(lam=1.0))
    # training loop: loss = task_loss + dkm.penalty(); loss.backward(); opt.step(); dkm.step()
    compressed = dkm.finalize()
    save(compressed, "model.dkm")

The ``deepkmeans`` command line runs the same library on files.
"""

from deepkmeans.accounting import Accounting, LayerAccount, account
from deepkmeans.calibrate import reestimate_batchnorm_
from deepkmeans.config import CompressConfig, LayerSpec, RegularizerConfig
from deepkmeans.energy.torch_layers import estimate_energy
from deepkmeans.errors import ConfigError, DeepKMeansError, FormatError, PlanWarning
from deepkmeans.export import OnnxExport, export_onnx
from deepkmeans.files.models import load, save
from deepkmeans.lifecycle import DeepKMeans, LayerReport, compress
from deepkmeans.measure import Measurement, measure
from deepkmeans.plan import LayerPlan, PlannedLayer, build_plan
from deepkmeans.shared import SharedWeight, materialize, shared_layers
from deepkmeans.tuning import TuneResult, tune
from deepkmeans.weights import load_pretrained

__version__ = "0.1.0"

__all__ = [
    "Accounting",
    "CompressConfig",
    "ConfigError",
    "DeepKMeans",
    "DeepKMeansError",
    "FormatError",
    "LayerAccount",
    "LayerPlan",
    "LayerReport",
    "LayerSpec",
    "Measurement",
    "OnnxExport",
    "PlanWarning",
    "PlannedLayer",
    "RegularizerConfig",
    "SharedWeight",
    "TuneResult",
    "__version__",
    "account",
    "build_plan",
    "compress",
    "estimate_energy",
    "export_onnx",
    "load",
    "load_pretrained",
    "materialize",
    "measure",
    "reestimate_batchnorm_",
    "save",
    "shared_layers",
    "tune",
]
