//! What a model folder holds, read and checked: config.json as data with every family quirk a
//! field (`config`), the one list of checkpoint tensors (`registry`), memory-mapped safetensors
//! (`safetensors`), the tokenizer (`tokenizer`) and the chat template (`chat`).

pub mod chat;
pub mod config;
pub mod registry;
pub mod safetensors;
pub mod tokenizer;
