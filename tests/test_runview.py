"""What the app shows of a run (karst.runview)."""

from __future__ import annotations

from karst.preflight import SetupForm
from karst.runview import run_label


def test_random_init_choice_reaches_the_run_and_its_label():
    assert SetupForm().to_train_config().pretrained is True
    cfg = SetupForm(pretrained=False).to_train_config()
    assert cfg.pretrained is False
    assert run_label(cfg) == "karst N2 m8 r8 (random init)"
    assert run_label(SetupForm(method="lora").to_train_config()) == "lora r8"
