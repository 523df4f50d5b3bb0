"""AttentionConfig: DeepSeek-V3.2's values, keyword fields, config.json and refusals."""

import math
import os

import pytest

import dsattn
from helpers import small_config

DATA = os.path.join(os.path.dirname(__file__), os.pardir, "data")


def test_deepseek_v32_values_and_derived_fields():
    c = dsattn.AttentionConfig.deepseek_v32()
    assert c == dsattn.AttentionConfig()
    assert (c.hidden_size, c.num_heads, c.q_lora_rank, c.kv_lora_rank) == (7168, 128, 1536, 512)
    assert (c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim) == (128, 64, 128)
    assert (c.index_n_heads, c.index_head_dim, c.index_topk) == (64, 128, 2048)
    assert c.qk_head_dim == 192 and c.latent_dim == 576
    m = 0.1 * math.log(40.0) + 1.0
    assert c.softmax_scale == pytest.approx(192**-0.5 * m * m, rel=1e-12)


def test_keyword_fields_replace_and_repr():
    c = small_config(index_topk=24)
    assert (c.hidden_size, c.num_heads, c.index_topk) == (96, 2, 24)
    assert c.rope_theta == 10000.0 and c.use_yarn is True  # untouched fields keep their defaults
    d = c.replace(index_topk=48, yarn_factor=8.0)
    assert (d.index_topk, d.yarn_factor, c.index_topk) == (48, 8.0, 24)
    assert d != c and d.replace(index_topk=24, yarn_factor=40.0) == c
    assert "index_topk=24" in repr(c)
    with pytest.raises(AttributeError):
        c.hidden_size = 5


def test_unknown_fields_and_wrong_types_raise_type_error():
    with pytest.raises(TypeError, match="unknown field 'hidden'"):
        dsattn.AttentionConfig(hidden=96)
    with pytest.raises(TypeError, match="num_heads must be an int, got float"):
        dsattn.AttentionConfig(num_heads=2.0)
    with pytest.raises(TypeError, match="use_yarn must be a bool, got int"):
        dsattn.AttentionConfig(use_yarn=1)


def test_impossible_values_raise_value_error_naming_the_field():
    # Messages use config.json's field names.
    with pytest.raises(ValueError, match="num_attention_heads must be a positive integer, got 0"):
        dsattn.AttentionConfig(num_heads=0)
    with pytest.raises(ValueError, match="qk_rope_head_dim must be even"):
        small_config(qk_rope_head_dim=15)
    with pytest.raises(ValueError, match="rope_theta"):
        small_config().replace(rope_theta=-1.0)
    # So large that heads x head dim would wrap a tensor size.
    with pytest.raises(ValueError, match="num_attention_heads must be at most 1048576"):
        dsattn.AttentionConfig(num_heads=2**62)


def test_from_json_reads_hugging_face_config():
    c = dsattn.AttentionConfig.from_json(os.path.join(DATA, "small_config.json"))
    assert (c.hidden_size, c.num_heads, c.q_lora_rank, c.kv_lora_rank) == (256, 4, 96, 128)
    assert (c.index_n_heads, c.index_head_dim, c.index_topk) == (4, 128, 24)
    assert c.v_head_dim == 32 and c.yarn_factor == 40.0


def test_from_json_errors_name_the_file(tmp_path):
    missing = tmp_path / "absent.json"
    with pytest.raises(ValueError, match="absent.json"):
        dsattn.AttentionConfig.from_json(str(missing))
    bad = tmp_path / "config.json"
    bad.write_text('{"hidden_size": "wide"}')
    with pytest.raises(ValueError, match="hidden_size"):
        dsattn.AttentionConfig.from_json(str(bad))
