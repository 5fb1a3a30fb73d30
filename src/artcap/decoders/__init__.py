"""Captioning decoders: the interface and registry (base.py) and one module per kind.

A new kind is one new file here plus one line below (its import runs its @register_decoder)."""

from .base import (EMOTIONS, Decoder, DecoderConfig, DecoderSettings, EmotionNet, Memory, State, caption_loss,
                   check_features, create_decoder, decoder_feature_kind, decoder_has_attention, decoder_kinds,
                   decoder_settings, emotion_features, emotion_ids, emotion_output_layer, lstm_cell, register_decoder,
                   settings_class)
from .merge import MergeDecoder
from .sat import SatSettings, ShowAttendTell

__all__ = ["EMOTIONS", "Decoder", "DecoderConfig", "DecoderSettings", "EmotionNet", "Memory", "MergeDecoder",
           "SatSettings", "ShowAttendTell", "State", "caption_loss", "check_features", "create_decoder",
           "decoder_feature_kind", "decoder_has_attention", "decoder_kinds", "decoder_settings", "emotion_features",
           "emotion_ids", "emotion_output_layer", "lstm_cell", "register_decoder", "settings_class"]
