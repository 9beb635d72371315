"""Multi30k German -> English with a small pre-norm Transformer (3 + 3 layers, d=256,
4 heads, FFN 1024, sinusoidal positions, shared 8k sentencepiece vocabulary trained on
both sides of the training split, tied embeddings), label smoothing 0.1, warmup + cosine,
beam search (4 beams, GNMT length penalty 0.6) for BLEU and chrF by sacrebleu on the raw
validation references.

  python -m bigflax train --config experiments/multi30k_de_en.py --workdir runs/multi30k \\
      --config.data.source_dir=../shared/data/multi30k
  python -m bigflax eval --workdir runs/multi30k       # loss, accuracy, BLEU, chrF
  python -m bigflax sample --workdir runs/multi30k --prompt "Ein Mann fährt Fahrrad."

Measured (2-core CPU shared with ~5 other workers' jobs, load average 8-12; the run got
roughly a fifth of the machine for most of its time): `flock ... nice timeout -s TERM 2400
python -m bigflax train` with these settings stopped by SIGTERM at step 301 of 900 (19k
sentence pairs, 0.66 epochs; ~2.2 s/step once the load eased, ~20 s/step before). Its
evaluation of the whole validation split (1,014 pairs, 4 beams, alpha 0.6): BLEU 17.8,
chrF 34.7, token accuracy 47.1 %, perplexity 27.2; 42.8 min wall in all (40 min of
training including compiles, 2.8 min final evaluation). "Ein Mann fährt mit dem Fahrrad
eine Straße entlang." -> "A man is riding a bicycle down a bike." Published small
Transformers reach ~35 BLEU after tens of epochs; at the 2.2 s/step seen last, 900 steps
take ~33 min; more epochs (train.num_steps) are what this run is missing.
"""

from bigflax import configs


def get_config(arg=None):
  del arg
  config = configs.base()
  config.task = dict(
    name="seq2seq", label_smoothing=0.1, beam_size=4, length_penalty=0.6, max_decode_len=0
  )
  config.model = dict(
    name="seq2seq",
    vocab_size=0,  # 0 = the tokenizer's vocabulary size
    num_encoder_layers=3,
    num_decoder_layers=3,
    num_heads=4,
    embed_dim=256,
    mlp_dim=1024,
    max_len=64,
    position="sinusoidal",
    tie_embeddings=True,
    pre_norm=True,
    activation="relu",
    dropout_rate=0.1,
    attention_dropout_rate=0.0,
  )
  config.tokenizer = dict(kind="sentencepiece", vocab_size=8000)
  config.data.update(
    name="multi30k",
    source_dir="../shared/data/multi30k",
    source_lang="de",
    target_lang="en",
    seq_len=48,
    global_batch_size=64,
  )
  config.optim.update(
    lr=1.5e-3,
    warmup_steps=150,
    decay="cosine",
    final_lr_fraction=0.05,
    b1=0.9,
    b2=0.98,
    eps=1e-9,
    weight_decay=0.01,
    clip_norm=1.0,
  )
  config.train.update(
    num_steps=900, log_every=25, eval_every=450, eval_steps=0, checkpoint_every=150
  )
  config.sample.prompts = (
    "Ein Mann fährt mit dem Fahrrad eine Straße entlang.",
    "Zwei Kinder spielen im Sand am Strand.",
  )
  return config
