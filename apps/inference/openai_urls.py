"""/v1/ on a tenant's host: the OpenAI-compatible endpoints."""

from django.urls import path

from apps.inference import openai_api

urlpatterns = [
    path("chat/completions", openai_api.ChatCompletionsView.as_view(), name="openai-chat"),
    path("completions", openai_api.CompletionsView.as_view(), name="openai-completions"),
    path("embeddings", openai_api.EmbeddingsView.as_view(), name="openai-embeddings"),
    path("models", openai_api.ModelsView.as_view(), name="openai-models"),
]
