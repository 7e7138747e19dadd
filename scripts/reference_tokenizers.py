#!/usr/bin/env python3
"""Encodes strings with the reference libraries, for the differential tests in crates/tokenizer/tests.

    reference_tokenizers.py tiktoken RANKS_FILE IN_JSON OUT_JSON   # tiktoken, GPT-2 pattern, encode_ordinary
    reference_tokenizers.py hf TOKENIZER_JSON IN_JSON OUT_JSON     # Hugging Face tokenizers
    reference_tokenizers.py hf-full TOKENIZER_JSON IN_JSON OUT_JSON # ... each as {ids, ids_with_special, decoded}

    reference_tokenizers.py hf-train CORPUS VOCAB_SIZE OUT_JSON    # train like ../shared/peers/bpe_train.py,
                                                                   # write how many tokens CORPUS encodes to

IN_JSON is a list of strings; OUT_JSON receives a list of id lists.
"""
import base64, json, sys

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

def tiktoken_encoder(path):
    import tiktoken
    ranks = {}
    for line in open(path, "rb"):
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    enc = tiktoken.Encoding("gpt2-ref", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": len(ranks)})
    return enc.encode_ordinary

def hf_encoder(path):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(path)
    return lambda text: tok.encode(text, add_special_tokens=False).ids

def hf_full(path):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(path)
    def full(text):
        ids = tok.encode(text, add_special_tokens=False).ids
        return {"ids": ids, "ids_with_special": tok.encode(text).ids,
                "decoded": tok.decode(ids, skip_special_tokens=False)}
    return full

def hf_train_count(corpus, vocab_size):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([corpus], trainer)
    return len(tok.encode(open(corpus, encoding="utf-8").read()).ids)

kind, vocab, src, dst = sys.argv[1:5]
if kind == "hf-train":
    json.dump(hf_train_count(vocab, int(src)), open(dst, "w"))
    sys.exit(0)
encode = {"tiktoken": tiktoken_encoder, "hf": hf_encoder, "hf-full": hf_full}[kind](vocab)
texts = json.load(open(src, encoding="utf-8"))
json.dump([encode(t) for t in texts], open(dst, "w"))
