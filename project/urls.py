from django.contrib import admin
from django.urls import path

from . import views

admin.site.site_header = "LLM gateway"
admin.site.site_title = "LLM gateway"

urlpatterns = [
    path("", views.chat_page, name="chat"),
    path("admin/", admin.site.urls),
]
