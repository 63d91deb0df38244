"""
Writes a seed corpus for dev/fuzz/fuzz_config.c, the model config reader:
the authors' configs/llama_*.json form, the config.json that transformers
4 and 5 write for a LlamaConfig, a multimodal config with a nested text_config, and
edge cases (escapes, exponents, nulls, deep nesting, a duplicate key, the
feature switches that are refused), and a libFuzzer dictionary of the keys
and json tokens (by default CORPUS.dict, beside the corpus directory).

    python dev/fuzz/make_config_seeds.py /tmp/fuzz_config_corpus [/tmp/fuzz_config_corpus.dict]
"""
import json
import os
import sys

# the authors' configs/llama_60m.json, key for key (their form: no
# max_position_embeddings, max_sequence_length instead)
AUTHORS_60M = {
    "architectures": ["LLaMAForCausalLM"], "bos_token_id": 0, "eos_token_id": 1, "hidden_act": "silu",
    "hidden_size": 512, "intermediate_size": 1376, "initializer_range": 0.02, "max_sequence_length": 1024,
    "model_type": "llama", "num_attention_heads": 8, "num_hidden_layers": 8, "pad_token_id": -1,
    "rms_norm_eps": 1e-06, "use_cache": True, "vocab_size": 32000,
}

# what LlamaConfig(...).to_json_string() writes (transformers 4.4x), for a small model
TRANSFORMERS_TINY = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 1, "eos_token_id": 2, "head_dim": 16, "hidden_act": "silu", "hidden_size": 64,
    "initializer_range": 0.02, "intermediate_size": 176, "max_position_embeddings": 64, "mlp_bias": False,
    "model_type": "llama", "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 4,
    "pretraining_tp": 1, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "torch_dtype": "float32", "transformers_version": "4.46.0",
    "use_cache": True, "vocab_size": 256,
}

# transformers 5 (and dev/export_hf.py) put rope_theta into rope_parameters
TRANSFORMERS5_TINY = dict({k: v for k, v in TRANSFORMERS_TINY.items() if k not in ("rope_theta", "rope_scaling")},
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, dtype="float32")

TINY_KEYS = ('"vocab_size": 256, "hidden_size": 64, "intermediate_size": 176, "num_attention_heads": 4, '
             '"num_hidden_layers": 2, "max_position_embeddings": 64')


def seeds():
    yield "authors_60m", json.dumps(AUTHORS_60M, indent=2)
    yield "authors_7b", json.dumps(dict(AUTHORS_60M, hidden_size=4096, intermediate_size=11008,
                                        num_attention_heads=32, num_hidden_layers=32, max_sequence_length=2048))
    yield "transformers_tiny", json.dumps(TRANSFORMERS_TINY, indent=2, sort_keys=True)
    yield "transformers5_tiny", json.dumps(TRANSFORMERS5_TINY, indent=2)
    yield "rope_parameters_scaled", json.dumps(dict(TRANSFORMERS5_TINY, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "original_max_position_embeddings": 8192}))
    yield "multimodal_nested", json.dumps({
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
        "text_config": dict(TRANSFORMERS_TINY, hidden_size=128),
        "vision_config": {"hidden_size": 1024, "layers": [[1, 2], {"x": None}]},
        **{k: TRANSFORMERS_TINY[k] for k in ("vocab_size", "hidden_size", "intermediate_size",
                                             "num_attention_heads", "num_hidden_layers")},
    }, indent=1)
    yield "minimal", "{" + TINY_KEYS + "}"
    yield "escapes", '{"name": "a\\"b\\\\c\\/d\\u00e9\\ud83d\\ude00\\b\\f\\n\\r\\t", ' + TINY_KEYS + "}"
    yield "numbers", ('{"a": -0, "b": 0.5e-3, "c": 1E+2, "d": -12.75e0, "rms_norm_eps": 1e-5, '
                      '"rope_theta": 500000, "max_sequence_length": 32, ' + TINY_KEYS + "}")
    yield "nulls", '{"rope_scaling": null, "tie_word_embeddings": null, "head_dim": null, ' + TINY_KEYS + "}"
    yield "deep", '{"x": ' + "[" * 60 + "{}" + "]" * 60 + ", " + TINY_KEYS + "}"
    yield "look_alikes", '{"note": "\\"hidden_size\\": 7, }", "l": ["{", "]"], ' + TINY_KEYS + "}"
    yield "duplicate", "{" + TINY_KEYS + ', "hidden_size": 128}'
    yield "refused_switches", ('{"tie_word_embeddings": true, "attention_bias": true, "rope_scaling": '
                               '{"type": "linear", "factor": 2.0}, "hidden_act": "gelu", ' + TINY_KEYS + "}")
    yield "bad_sizes", '{"vocab_size": 64.7, "hidden_size": 1e20, "intermediate_size": -1, ' \
                       '"num_attention_heads": "4", "num_hidden_layers": 2147483648}'
    yield "empty_object", "{}"
    yield "whitespace", " \t\r\n{ \n" + TINY_KEYS.replace(", ", " ,\n\t") + "\r\n}\n "


DICT_TOKENS = [
    "vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
    "max_position_embeddings", "max_sequence_length", "num_key_value_heads", "head_dim", "rms_norm_eps",
    "rope_theta", "tie_word_embeddings", "attention_bias", "mlp_bias", "rope_scaling", "rope_parameters",
    "attention_dropout", "hidden_act", "text_config", "rope_type", "default",
]


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    n = 0
    for name, text in seeds():
        with open(os.path.join(out, name + ".json"), "w") as f:
            f.write(text)
        n += 1
    # libFuzzer's dictionary format: one "quoted" token a line, \\ and \" escaped
    def quoted(s):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    words = ['"%s"' % k for k in DICT_TOKENS] + ["true", "false", "null", "{", "}", "[", "]", ":", ",", '"',
                                                  "\\u0000", "\\\\", "1e999", "-0", "2147483647", "0.0", "silu"]
    dict_path = sys.argv[2] if len(sys.argv) > 2 else out.rstrip("/") + ".dict"
    with open(dict_path, "w") as f:
        f.write("".join(quoted(w) + "\n" for w in words))
    print(f"wrote {n} seeds to {out} and the dictionary {dict_path}")


if __name__ == "__main__":
    main()
