"""Whole models built from the layers, and decoding.

  seq2seq.py         RNN encoder-decoders: RNNencdec, RNNsearch (Bahdanau), Luong global/local.
  transformer.py     the Transformer encoder-decoder (arXiv:1706.03762).
  transformer_xl.py  the Transformer-XL language model with segment memories (arXiv:1901.02860).
  lm.py              a decoder-only causal Transformer LM (RoPE, pre-LN): the long-context, sequence-parallel model.
  convs2s.py         the convolutional sequence-to-sequence model (arXiv:1705.03122).
  han.py             hierarchical attention networks for documents, HN-ATT / HN-AVE / HN-MAX (N16-1174).
  text_classifiers.py  TextCNN (arXiv:1408.5882) and a BiLSTM classifier, pooled by max, k-max, chunk-max, mean,
                     last state, feed-forward attention or structured self-attention.
  bert.py            BERT: the encoder, MLM + NSP pre-training heads, fine-tuning heads, MLM masking
                     (arXiv:1810.04805).
  reader.py          the Attention Sum Reader (arXiv:1603.01547) and the Attention-over-Attention Reader
                     (arXiv:1607.04423) for cloze questions.
  decoding.py        greedy and beam-search decoding over the step-function protocol every model implements.
"""
