"""channels_last training of the KL autoencoder gives the same numbers as NCHW (float tolerance)."""

from __future__ import annotations

import torch

from latent_flow.training.autoencoder import AutoencoderModule


def _module(channels_last: bool) -> AutoencoderModule:
    torch.manual_seed(0)
    return AutoencoderModule(base_channels=8, channel_mult=(1, 2), channels_last=channels_last)


def test_autoencoder_channels_last_matches_nchw(tmp_path):
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    ref, fast = _module(False), _module(True)
    assert fast.autoencoder.encoder[0].weight.is_contiguous(memory_format=torch.channels_last)
    out_ref = ref.compute_losses(images, sample=False)
    out_fast = fast.compute_losses(images, sample=False)
    torch.testing.assert_close(out_fast["loss"], out_ref["loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out_fast["reconstruction"], out_ref["reconstruction"], rtol=1e-4, atol=1e-5)
    out_ref["loss"].backward()
    out_fast["loss"].backward()
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters()):
        torch.testing.assert_close(p_fast.grad, p_ref.grad, rtol=1e-4, atol=1e-6, msg=name)
    # posterior sampling draws the same noise in both formats
    torch.manual_seed(1)
    a = ref.compute_losses(images)["loss"]
    torch.manual_seed(1)
    b = fast.compute_losses(images)["loss"]
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    # the exported file holds contiguous weights equal to the NCHW module's
    path = fast.export(tmp_path / "ae.pt")
    state = torch.load(path, weights_only=False)["state_dict"]
    for key, value in ref.autoencoder.state_dict().items():
        assert state[key].is_contiguous(), key
        torch.testing.assert_close(state[key], value)
    assert fast.autoencoder.encoder[0].weight.is_contiguous(memory_format=torch.channels_last)
