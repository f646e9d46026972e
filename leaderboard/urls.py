from django.urls import path

from . import views

app_name = "leaderboard"

urlpatterns = [
    path("", views.index, name="index"),
    path("<slug:slug>/", views.board, name="board"),
    path("<slug:slug>/standings.json", views.board_json, name="board_json"),
    path("<slug:slug>/pareto/", views.pareto_page, name="pareto"),
    path("<slug:slug>/pareto.json", views.pareto_json, name="pareto_json"),
    path("<slug:slug>/export.csv", views.export, {"fmt": "csv"}, name="export_csv"),
    path("<slug:slug>/export.json", views.export, {"fmt": "json"}, name="export_json"),
    path("<slug:slug>/submissions/<int:submission_id>/", views.analysis, name="analysis"),
    path("<slug:slug>/submissions/<int:submission_id>/breakdown/", views.breakdown, name="breakdown"),
    path("<slug:slug>/reveal/", views.reveal, name="reveal"),
    path("<slug:slug>/finalize/", views.finalize, name="finalize"),
    path("<slug:slug>/reproductions/<int:submission_id>/", views.reproduction, name="reproduction"),
]
