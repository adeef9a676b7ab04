import torch

from reprkit.lens import final_norm, format_lens, lens_logits, logit_lens

from .conftest import tiny_llama


class _Tok:
    """Enough of a tokenizer for the lens: characters are token ids."""

    def __call__(self, text, return_tensors=None, add_special_tokens=True):
        ids = [ord(c) % 128 for c in text]
        return {"input_ids": torch.tensor([ids]) if return_tensors else ids}

    def decode(self, ids):
        return "".join(chr(int(i)) for i in ids)


def test_last_layer_lens_equals_the_model_logits():
    model = tiny_llama()
    ids = torch.tensor([[5, 9, 33, 70, 2]])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        from reprkit.hooks import capture

        with capture(model, -1) as cap:
            model(input_ids=ids)
        lens = lens_logits(model, cap[3])
    torch.testing.assert_close(lens, out.logits.float(), rtol=1e-5, atol=1e-5)
    assert final_norm(model) is model.model.norm


def test_logit_lens_tables_and_target_rank():
    model = tiny_llama()
    res = logit_lens(model, _Tok(), ["abc", "hello"], layers=[0, 3], top_k=3, target="e")
    assert res["layers"] == [0, 3] and res["tokens"][1] == list("hello")
    assert len(res["top"][3][1]) == 5 and len(res["top"][3][1][0]) == 3
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[ord(c) for c in "hello"]])).logits[0]
    probs = torch.softmax(logits.float(), -1)
    t = ord("e")
    torch.testing.assert_close(torch.tensor(res["target"]["prob"][3][1]), probs[:, t], rtol=1e-5, atol=1e-6)
    assert res["target"]["rank"][3][1] == (probs > probs[:, t:t + 1]).sum(-1).tolist()
    assert res["top"][3][1][-1][0][0] == chr(int(probs[-1].argmax()))
    assert "target 'e'" in format_lens(res, prompt=1)


def test_lens_heatmap_of_a_real_lens_result():
    from reprkit.app.figures import logit_lens_heatmap

    res = logit_lens(tiny_llama(), _Tok(), ["abc", "hello"], layers=[0, 3], top_k=2, target="e")
    hm = logit_lens_heatmap(res, prompt=1, value="target").data[0]
    assert list(hm.y) == ["L0", "L3"] and len(hm.x) == 5
    assert list(hm.z[1]) == res["target"]["prob"][3][1]
    top = logit_lens_heatmap(res, prompt=0).data[0]
    assert list(top.text[0]) == [res["top"][0][0][t][0][0] for t in range(3)]
