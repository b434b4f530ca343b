"""Where misalignment lives in the activations: a misalignment direction per checkpoint.

Following Soligo, Turner et al. ("Convergent linear representations of emergent
misalignment", 2025): at a checkpoint, the answers its judges call misaligned and those they
call aligned (the run's EM definition, coherent answers only) are run through that
checkpoint's model, and at every layer the difference of the mean residual-stream activation
over the answer tokens is the **direction**. It is a correlate found from judged labels, not a
mechanism: it says where the two groups of answers differ on average, and how well that one
vector tells them apart on answers it was not fitted on (AUROC). Whether it *causes* the
behaviour is what ablating it (projecting it out) and steering with it (adding it) test.

- ``hooks``: the residual stream of each decoder layer, read (masked means over answer tokens)
  and changed (ablation, steering), through forward hooks;
- ``fit``: directions, their held-out AUROC and projections, from streamed per-answer means.
"""
