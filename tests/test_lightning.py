"""A fixedhead model trained inside Lightning, with the HeadNumbers callback logging the head's numbers:
checked against the same numbers computed by hand from the trained model."""

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from fixedhead import metrics  # noqa: E402
from fixedhead.config import make_config  # noqa: E402
from fixedhead.models.classifier import build_model  # noqa: E402
from tiny import TINY  # noqa: E402


class Module(pl.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def training_step(self, batch, index):
        return self.model.loss(*batch)[0]

    def validation_step(self, batch, index):
        self.log("val_loss", self.model.loss(*batch)[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def test_head_numbers_inside_lightning(tmp_path):
    from fixedhead.evaluation.callbacks import HeadNumbers

    torch.manual_seed(0)
    model = build_model(make_config(TINY, {"model.similarity": "cosine", "model.learn_scale": True}).model,
                        0, 5, 1, 16)
    images, labels = torch.randn(64, 1, 16, 16), torch.arange(5).repeat(13)[:64]
    loader = DataLoader(TensorDataset(images, labels), batch_size=16)
    trainer = pl.Trainer(max_epochs=2, callbacks=[HeadNumbers()], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         default_root_dir=tmp_path)
    trainer.fit(Module(model), loader, loader)
    logged = trainer.logged_metrics
    off = metrics.off_diagonal(metrics.cosine_matrix(model.head.vectors()))
    assert logged["head/cos_max"].item() == pytest.approx(off.max().item(), rel=1e-5)
    assert logged["head/scale"].item() == pytest.approx(model.head.scale.item(), rel=1e-5)
    model.eval()
    with torch.no_grad():
        features = model.forward_features(images)
        predicted = model.forward_head(features).argmax(1)
    expected = metrics.mean_cos_to_class(features, model.head.vectors(), predicted)
    assert logged["head/compactness"].item() == pytest.approx(expected, rel=1e-4)
