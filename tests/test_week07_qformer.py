"""Week 7: the Q-Former vs a LLaVA-style projector, on one recipe (stage2_fundamentals/qformer_lab.py)."""

import numpy as np
import pytest
import torch

from curriculum import shapesworld, training, zoo
from curriculum.tiny_blip2 import batch_tokens
from curriculum.tiny_clip import pixels
from stage2_fundamentals import qformer_lab
from stage2_fundamentals.qformer_lab import Captioner, Design

pytestmark = pytest.mark.week7


def test_the_qformer_path_is_blip2s_own():
    """Captioner's Q-Former path on the bundled tiny BLIP-2's weights gives transformers' own loss:
    the experiment trains BLIP-2's connector, not a look-alike."""
    blip2, processor = zoo.load_blip2("tiny", "cpu")
    samples = shapesworld.generate("test", 4)
    targets = [s.caption_en for s in samples]
    pixel_values = pixels(np.stack([np.asarray(s.image) for s in samples]), processor.image_processor)
    with torch.no_grad():
        input_ids, attention_mask, labels = batch_tokens(processor, [""] * 4, targets)
        theirs = blip2(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        ours = Captioner(blip2)(pixel_values, *qformer_lab.text_batch(processor.tokenizer, targets))
    assert torch.allclose(ours, theirs.loss, atol=1e-5)
    # and its greedy captions are the model's own
    ids = Captioner(blip2).caption(pixel_values, processor.tokenizer.bos_token_id, processor.tokenizer.eos_token_id)
    ours_text = [t.strip() for t in processor.tokenizer.batch_decode(ids, skip_special_tokens=True)]
    inputs = processor(images=[s.image for s in samples], text=[""] * 4, return_tensors="pt")
    generated = blip2.generate(**inputs, max_new_tokens=32, do_sample=False, num_beams=1)
    theirs_text = [t.strip() for t in processor.tokenizer.batch_decode(generated, skip_special_tokens=True)]
    assert ours_text == theirs_text


def test_designs_hand_the_decoder_different_lengths():
    processor = qformer_lab.build_processor()
    x = torch.zeros(2, 3, 64, 64)
    sample = shapesworld.generate("test", 1)[0]
    decoder_flops = []
    for design, length in ((Design("qformer", 2), 2), (Design("qformer", 8), 8), (Design("projector"), 17)):
        model = qformer_lab.new_captioner(design, processor)
        assert model.prefix(x).shape == (2, length, 128), design
        assert not any(p.requires_grad for p in model.vision.parameters())  # the ViT stays frozen
        decoder_flops.append(qformer_lab.forward_flops(model, processor, sample)["decoder_mflops"])
    assert decoder_flops == sorted(decoder_flops)  # a longer prefix costs the decoder more


def test_a_short_training_learns():
    design = Design("projector", steps=12, batch_size=8, pool=200)
    _, _, losses = qformer_lab.train(design, training.Options(progress=False))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 1.0


def test_the_smallest_n_test_scores_seen_and_held_out_pairs(cli_runner):
    """Accuracy is reported apart for seen and held-out pairs: fewer test images than --n-test's
    minimum would leave a group empty (a mean of nothing, NaN in the JSON)."""
    code, _, err = cli_runner(qformer_lab.main, ["compare", "--n-test", "2"])
    assert code == 2 and "argument --n-test: expected a whole number from 3 to" in err
    samples = shapesworld.generate("test", 3)
    assert {s.heldout for s in samples} == {False, True}
