"""The fast path of a local model: the greedy answers of a plain full-prompt `generate`, with
less work per frame. Its caches are kept, cut and rolled back through caches.py, the one
place that reaches into transformers' cache layers.

`r1track.Tracker` answers through `FastAnswerer` when it holds a local model (unless
built with fast=False, which asks plain `generate`). It speaks the prompts' and answers'
vocabulary only, and the core imports it, never the other way.
"""

from __future__ import annotations

import caches
from answers import Answer, answer_confidence
from bases import rope_positions
from prompts import (
    END_OF_TURN,
    VISION_START,
    Request,
    answer_text,
    answer_token_limit,
    build_inputs,
    image_patches,
    image_side,
    vision_token_ids,
)


class FastAnswerer:
    """The greedy answers of ModelAnswerer with less work per frame.

    - Template reuse: the prompt up to the search image (system text, template image) is the
      same on every frame of a sequence; its KV cache is computed once and each frame runs
      only the search image and the question. The 3D positions are taken from the full
      prompt, so the model sees exactly what a full-prompt forward would.
    - Batching: one call answers many sequences; their prefix caches are stacked and the
      questions (whose box digits differ in length) left-padded against them.
    - Drafting: the answer is guessed from the previous frame's answer (at first, from the
      template box: both crops are centred alike) and checked in one forward pass; the
      longest run the model agrees with is kept, so greedy output is unchanged.
    `decode_passes` counts the forward passes after the first token.

    A model with linear-attention layers (Qwen3.5) folds every token it is fed into a state:
    the template's state is saved and restored each frame; a row that rejects a draft is rolled
    back (see _decode); batched questions are padded on the right and each row's state after
    its own last token kept (padding between the template and the question would change the
    state).
    """

    def __init__(self, model, processor, settings, max_new_tokens=None, reuse_template=True,
                 draft=True, draft_tokens=8, min_new_tokens=0):
        self.model, self.processor, self.settings = model, processor, settings
        # read once: each reading walks the model's modules to a parameter (~10-60 us a pass)
        self.device, self.dtype = model.device, model.dtype
        self.max_new_tokens = max_new_tokens or answer_token_limit(settings.think)
        self.min_new_tokens = min_new_tokens
        self.reuse_template = reuse_template
        self.draft_tokens = draft_tokens if draft and not settings.think else 0
        tokenizer = processor.tokenizer
        self.end_ids = {tokenizer.convert_tokens_to_ids(END_OF_TURN), tokenizer.pad_token_id}
        self.pad = tokenizer.pad_token_id
        self.suppressed = vision_token_ids(tokenizer)
        self.states = caches.has_states(model.config)
        self.decode_passes = 0
        self._rows_of = None  # (the states last answered together, their rows: see _rows)

    def __call__(self, requests: list[Request]) -> list[Answer]:
        import torch

        with torch.inference_mode():
            states = [self._sequence(r) for r in requests]
            cache, mask, first = self._prefill(requests, states)
            answers, logprobs = self._decode(states, cache, mask, first)
        tokenizer, replies = self.processor.tokenizer, []
        for state, answer, chosen in zip(states, answers, logprobs):
            answer, chosen = answer[:self.max_new_tokens], chosen[:self.max_new_tokens]  # a last pass may overshoot
            state["draft"] = answer  # the next frame's guess
            replies.append(Answer(tokenizer.decode(answer, skip_special_tokens=True),
                                  answer_confidence(tokenizer, answer, chosen)))
        return replies

    def _forward(self, **inputs):
        import torch

        inputs = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return self.model(**inputs, use_cache=True)

    def _sequence(self, request: Request) -> dict:
        """What stays the same over a sequence, computed at its first frame: token ids, 3D
        positions, the template's pixels and (with template reuse) the prefix's KV cache."""
        state = request.state if request.state is not None else {}
        if "ids" in state:
            return state
        import torch

        s = self.settings
        inputs = build_inputs(self.processor, request.template, request.search, request.template_box_xyxy,
                              think=s.think, wording=s.wording, as_published_client=s.asks_as_client)
        positions = rope_positions(self.model, inputs, attention_mask=False)
        ids = inputs["input_ids"][0].tolist()
        vision_start = self.processor.tokenizer.convert_tokens_to_ids(VISION_START)
        search_start = [i for i, t in enumerate(ids) if t == vision_start][1]
        prefix = search_start if self.reuse_template else 0
        template_patches = int(inputs["image_grid_thw"][0].prod())
        state.update(ids=ids, types=inputs["mm_token_type_ids"][0], positions=positions[:, 0], prefix=prefix,
                     next_position=int(positions.max()) + 1, grids=inputs["image_grid_thw"],
                     template_pixels=inputs["pixel_values"][:template_patches])
        if prefix:
            out = self._forward(input_ids=inputs["input_ids"][:, :prefix],
                                attention_mask=torch.ones(1, prefix, dtype=torch.long),
                                position_ids=positions[:, :, :prefix],
                                mm_token_type_ids=inputs["mm_token_type_ids"][:, :prefix],
                                pixel_values=state["template_pixels"], image_grid_thw=inputs["image_grid_thw"][:1],
                                logits_to_keep=1)
            state["prefix_cache"] = caches.snapshot(out.cache)
        first_guess = answer_text(request.template_box_xyxy, image_side(request.template), self.processor.base.boxes)
        answer_ids = self.processor.tokenizer(first_guess, add_special_tokens=False)
        state["draft"] = answer_ids["input_ids"] + [self.processor.tokenizer.convert_tokens_to_ids(END_OF_TURN)]
        return state

    def _prefill(self, requests, states):
        """Run every row's search image and question (padded to one width) against its prefix;
        returns the cache, the attention mask so far and each row's first token."""
        import torch

        search = image_patches([r.search for r in requests], self.processor.image_processor, self.device)
        ids, positions, types, mask, cache, template_pixels, lengths = self._rows(states)
        if cache is not None:  # the last frame's cache of these rows, cut back to their prefix
            cache, prefix_snapshot = cache
            caches.cut_back(cache, states[0]["prefix"], prefix_snapshot)
            pixels, grids = search["pixel_values"], search["image_grid_thw"]  # only the search images are new
        else:
            cache = caches.new_cache(self.model.config)
            per_image = search["pixel_values"].chunk(len(states))
            pixels = torch.cat([torch.cat([template.to(p.device), p]) for template, p in zip(template_pixels, per_image)])
            grids = torch.cat([state["grids"] for state in states])
        width, last = ids.shape[1], 1
        if lengths is not None:  # right-padded: each row's first token follows its own last
            last = width - min(lengths) + 1
            caches.record(cache, last)
        out = self._forward(input_ids=ids, attention_mask=mask, position_ids=positions, mm_token_type_ids=types,
                            pixel_values=pixels, image_grid_thw=grids, cache=cache, logits_to_keep=last)
        logits = out.logits[:, -1:]
        if lengths is not None:
            caches.keep_first(out.cache, width, lengths)
            at = torch.tensor(lengths, device=out.logits.device) - (width - last) - 1
            logits = out.logits[torch.arange(len(lengths)), at][:, None]
        tokens, logprobs = self._greedy(logits, [0] * len(states))
        return out.cache, mask, list(zip(tokens[:, -1].tolist(), logprobs[:, -1].tolist()))

    def _rows(self, states):
        """The rows' ids, 3D positions, token types and attention mask (questions padded to
        one width) and a cache of their stacked prefixes with its snapshot (None without
        template reuse): fixed while the same sequences are answered together, so made once for
        them (a tracked video or an eval group answers the same rows frame after frame), not
        per frame. The cache grows by a frame's tokens and is cut back to the prefix before
        the next (slices, no copies: rebuilding it copied every layer's keys and values twice
        a frame). Questions are left-padded, except after a prefix of a model with states:
        there on the right, and `lengths` gives each row's own (else None)."""
        if self._rows_of is not None and len(self._rows_of[0]) == len(states) \
                and all(kept is state for kept, state in zip(self._rows_of[0], states)):
            return self._rows_of[1]
        import torch

        prefix = states[0]["prefix"]
        suffixes = [state["ids"][prefix:] for state in states]
        rows, width = len(states), max(len(x) for x in suffixes)
        right = self.states and prefix and len({len(x) for x in suffixes}) > 1
        ids = torch.full((rows, width), self.pad, dtype=torch.long)
        positions = torch.ones(3, rows, width, dtype=torch.long)
        types = torch.zeros(rows, width, dtype=torch.long)
        mask = torch.zeros(rows, prefix + width, dtype=torch.long)
        mask[:, :prefix] = 1
        for row, (state, suffix) in enumerate(zip(states, suffixes)):
            n = len(suffix)
            place = slice(0, n) if right else slice(width - n, width)
            ids[row, place] = torch.tensor(suffix)
            positions[:, row, place] = state["positions"][:, prefix:]
            types[row, place] = state["types"][prefix:]
            mask[row, prefix + place.start:prefix + place.stop] = 1
        cache = None
        if prefix:
            stacked = caches.stacked(self.model.config, [state["prefix_cache"] for state in states])
            cache = stacked, caches.snapshot(stacked)
        lengths = [len(x) for x in suffixes] if right else None
        made = ids, positions, types, mask, cache, [state["template_pixels"] for state in states], lengths
        self._rows_of = (list(states), made)
        return made

    def _greedy(self, logits, answer_lengths):
        """Argmax tokens [rows, positions] and their log-probabilities; position i of a row
        would be token answer_length + i of its answer (before min_new_tokens the end is held
        back). The probabilities are those of the distribution the tokens were chosen from."""
        import torch

        logits = logits.float()
        logits[..., self.suppressed] = float("-inf")
        if self.min_new_tokens:
            index = torch.as_tensor(answer_lengths)[:, None] + torch.arange(logits.shape[1])
            early = (index < self.min_new_tokens).to(logits.device)
            for end in self.end_ids:
                logits[..., end] = logits[..., end].masked_fill(early, float("-inf"))
        best, tokens = logits.log_softmax(-1).max(-1)
        return tokens.cpu(), best.cpu()

    def _decode(self, states, cache, mask, first):
        """Greedy decoding, each pass feeding every row its last token and K drafted ones.

        A row that rejects a draft takes back what the pass fed it: an attention layer masks the
        rejected keys. A linear-attention layer cannot: answering one row, its state is restored
        to before the pass and the tokens it kept are fed again at the head of its next pass
        (whose drafts fill every row to one width: no row is padded, nothing pads a state);
        answering several, the pass records the state after each draft and each row keeps its
        own (transformers' PyTorch fallback records token by token, a cost the rows share)."""
        import torch

        rows, k = len(states), self.draft_tokens
        answers = [[token] for token, _ in first]
        logprobs = [[logprob] for _, logprob in first]
        done = [token in self.end_ids for token, _ in first]
        position = torch.tensor([state["next_position"] for state in states])  # where the next fed token goes
        again = [[] for _ in states]  # per row: kept tokens of its last pass to feed again (its state went back)
        while not all(done) and max(len(a) for a in answers) < self.max_new_tokens:
            width = max(len(a) for a in again) + 1 + k
            fed, lead = [], []  # per row: its tokens again, its last token, then drafts (by place in the answer)
            for state, answer, kept in zip(states, answers, again):
                row = [*kept, answer[-1]]
                lead.append(len(kept))
                row += state["draft"][len(answer):len(answer) + width - len(row)]
                fed.append(row + [self.pad] * (width - len(row)))
            lead_t = torch.tensor(lead)
            positions = ((position - lead_t)[:, None] + torch.arange(width)).expand(3, rows, width)
            mask = torch.cat([mask, torch.ones(rows, width, dtype=torch.long)], 1)
            # states after a rejected draft: one row goes back and is fed again (a chunked pass); several rows
            # record the state after each draft and each keeps its own (the token-by-token cost shared by the rows)
            record = self.states and k and rows > 1
            before = caches.snapshot(cache) if self.states and k and not record else None
            if record:
                caches.record(cache, width)
            out = self._forward(input_ids=torch.tensor(fed), attention_mask=mask, position_ids=positions, cache=cache)
            self.decode_passes += 1
            # best[row][i]: the model's token after fed[row][i]; chosen[row][i] its log-probability
            tokens, chosen = self._greedy(out.logits, [len(a) - n for a, n in zip(answers, lead)])
            cache, best, chosen = out.cache, tokens.tolist(), chosen.tolist()
            back, accepted = [], [width] * rows  # rows whose states go back; tokens of this pass each row keeps
            for row in range(rows):
                again[row] = []
                if done[row]:
                    continue
                n, drafted = lead[row], width - lead[row] - 1
                kept = 0  # drafted tokens the model agrees with
                while kept < drafted and fed[row][n + 1 + kept] == best[row][n + kept] \
                        and best[row][n + kept] not in self.end_ids:
                    kept += 1
                answers[row] += best[row][n:n + kept + 1]
                logprobs[row] += chosen[row][n:n + kept + 1]
                done[row] = answers[row][-1] in self.end_ids or len(answers[row]) >= self.max_new_tokens
                position[row] += kept + 1
                accepted[row] = n + kept + 1
                if kept == drafted or done[row]:  # nothing to take back, or nothing more to say
                    continue
                if before is None:  # the drafts after a disagreement were never said
                    mask[row, mask.shape[1] - drafted + kept:] = 0
                else:  # its whole pass taken back, what it keeps fed again next pass
                    mask[row, mask.shape[1] - width:] = 0
                    again[row] = fed[row][:n + 1 + kept]
                    back.append(row)
            if record:
                caches.keep_first(cache, width, accepted)
            if back and not all(done):
                caches.restore_states(cache, before, back)
        return answers, logprobs
