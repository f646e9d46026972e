from django.urls import path

from portal import views

urlpatterns = [
    path("profile/", views.profile, name="profile"),
    path("team/", views.my_team, name="my_team"),
]
