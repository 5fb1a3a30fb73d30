"""Captioning decoders: the interface and registry (base.py) and one module per kind.

A new kind is one new file here plus one line below (its import runs its @register_decoder)."""

from .base import (EMOTIONS, ConditionNet, ConditionSlot, Decoder, DecoderConfig, DecoderSettings, Memory, State,
                   add_condition_layers, caption_loss, check_features, condition_features, condition_output,
                   create_decoder, decoder_feature_kind, decoder_has_attention, decoder_kinds, decoder_settings,
                   lstm_cell, register_decoder, settings_class)
from .merge import MergeDecoder
from .sat import SatSettings, ShowAttendTell

__all__ = ["EMOTIONS", "ConditionNet", "ConditionSlot", "Decoder", "DecoderConfig", "DecoderSettings", "Memory",
           "MergeDecoder", "SatSettings", "ShowAttendTell", "State", "add_condition_layers", "caption_loss",
           "check_features", "condition_features", "condition_output", "create_decoder", "decoder_feature_kind",
           "decoder_has_attention", "decoder_kinds", "decoder_settings", "lstm_cell", "register_decoder",
           "settings_class"]
